package mcs

import (
	"k8s.io/client-go/kubernetes"
	kubefake "k8s.io/client-go/kubernetes/fake"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	mcsfake "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned/fake"
)

func fakeKube() kubernetes.Interface { return kubefake.NewClientset() }
func fakeMCS() mcsclient.Interface   { return mcsfake.NewSimpleClientset() }
