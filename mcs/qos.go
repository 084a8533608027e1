package mcs

import (
	"fmt"
	"strings"

	"github.com/patronus/patronus/qos"
)

// AnnotationQoSClass on a ServiceImport is the QoS class its traffic takes (the merged
// exports' Service label of the same key), absent for none. Same key as the pod annotation.
const AnnotationQoSClass = qos.AnnotationClass

// ServiceClass is the QoS class an exported Service's labels ask for: the pod QoS
// annotation's key used as a label (`patronus.io/qos-class: bulk`). "" when the label is
// absent; an invalid value is an error naming the accepted values, and no class.
// patronus.io/max-latency-ms and patronus.io/min-bandwidth-mbps are per-pod requirements
// of path selection and are not taken from Service labels.
func ServiceClass(labels map[string]string) (qos.Class, error) {
	v, ok := labels[qos.AnnotationClass]
	if !ok {
		return "", nil
	}
	c, err := qos.ParseClass(strings.TrimSpace(v))
	if err != nil {
		return "", fmt.Errorf("label %s of the Service: %w; the service's traffic keeps the client pods' classes", qos.AnnotationClass, err)
	}
	return c, nil
}

// VIPClass is the QoS class of a client pod's traffic to a ClusterSetIP: the pod's own when
// its annotations name a valid class, else the service's class when it has one, else def
// (the node's default class).
func VIPClass(podAnnotations map[string]string, service, def qos.Class) qos.Class {
	if v, ok := podAnnotations[qos.AnnotationClass]; ok {
		if c, err := qos.ParseClass(strings.TrimSpace(v)); err == nil {
			return c
		}
	}
	if service.Valid() {
		return service
	}
	if def.Valid() {
		return def
	}
	return qos.DefaultClass
}
