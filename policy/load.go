package policy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// Loader collects Namespaces, Pods and NetworkPolicies from YAML or JSON manifests
// (multi-document YAML, and kind: List or any *List kind such as kubectl's output), for
// offline analysis. Other kinds are skipped and reported in Skipped.
type Loader struct {
	Input   Input
	Skipped []string // "file: document N: kind ns/name skipped", for the user to see

	seen map[string]string // "Kind ns/name" → file that defined it
}

// LoadDir reads every *.yaml, *.yml and *.json file of dir (not its subdirectories), in
// name order.
func LoadDir(dir string) (*Loader, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read manifests: %w", err)
	}
	l := &Loader{}
	found := false
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if e.IsDir() || (ext != ".yaml" && ext != ".yml" && ext != ".json") {
			continue
		}
		found = true
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read manifests: %w", err)
		}
		if err := l.Add(path, data); err != nil {
			return nil, err
		}
	}
	if !found {
		return nil, fmt.Errorf("read manifests: no *.yaml, *.yml or *.json file in %s", dir)
	}
	return l, nil
}

// Add parses one file's content; name is used in errors.
func (l *Loader) Add(name string, data []byte) error {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: document %d: %w", name, doc, err)
		}
		js, err := yaml.YAMLToJSON(raw)
		if err != nil {
			return fmt.Errorf("%s: document %d: %w", name, doc, err)
		}
		if err := l.addObject(fmt.Sprintf("%s: document %d", name, doc), name, js); err != nil {
			return err
		}
	}
}

func (l *Loader) addObject(where, file string, js []byte) error {
	js = bytes.TrimSpace(js)
	if len(js) == 0 || string(js) == "null" {
		return nil // an empty document, or only comments
	}
	if js[0] == '[' {
		// A bare array of objects, as some tools write JSON.
		var items []json.RawMessage
		if err := json.Unmarshal(js, &items); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		for i, item := range items {
			if err := l.addObject(fmt.Sprintf("%s: [%d]", where, i), file, item); err != nil {
				return err
			}
		}
		return nil
	}
	var tm struct {
		metav1.TypeMeta
		Metadata struct{ Namespace, Name string }
	}
	if err := json.Unmarshal(js, &tm); err != nil {
		return fmt.Errorf("%s: not a Kubernetes object: %w%s", where, err, boolHint(err))
	}
	if tm.Kind == "" {
		return fmt.Errorf("%s: no kind", where)
	}
	if tm.Kind == "List" || strings.HasSuffix(tm.Kind, "List") {
		var list struct{ Items []json.RawMessage }
		if err := json.Unmarshal(js, &list); err != nil {
			return fmt.Errorf("%s: %s: %w", where, tm.Kind, err)
		}
		for i, item := range list.Items {
			if err := l.addObject(fmt.Sprintf("%s: items[%d]", where, i), file, item); err != nil {
				return err
			}
		}
		return nil
	}
	id := tm.Metadata.Name
	if tm.Kind != "Namespace" {
		id = nsOf(tm.Metadata.Namespace) + "/" + id
	}
	where = fmt.Sprintf("%s (%s %s)", where, tm.Kind, id)
	switch {
	case tm.Kind == "Namespace" && tm.APIVersion == "v1":
		var ns corev1.Namespace
		if err := json.Unmarshal(js, &ns); err != nil {
			return fmt.Errorf("%s: %w%s", where, err, boolHint(err))
		}
		if err := l.claim("Namespace "+id, file, where); err != nil {
			return err
		}
		l.Input.Namespaces = append(l.Input.Namespaces, ns)
	case tm.Kind == "Pod" && tm.APIVersion == "v1":
		var p corev1.Pod
		if err := json.Unmarshal(js, &p); err != nil {
			return fmt.Errorf("%s: %w%s", where, err, boolHint(err))
		}
		p.Namespace = nsOf(p.Namespace)
		if err := checkPod(&p); err != nil {
			return fmt.Errorf("%s: %w%s", where, err, boolHint(err))
		}
		if err := l.claim("Pod "+id, file, where); err != nil {
			return err
		}
		l.Input.Pods = append(l.Input.Pods, p)
	case tm.Kind == "NetworkPolicy" && tm.APIVersion == "networking.k8s.io/v1":
		var np networkingv1.NetworkPolicy
		// Strict: a misspelt field (say "egres") silently dropped would change the verdicts.
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&np); err != nil {
			return fmt.Errorf("%s: %w%s", where, err, boolHint(err))
		}
		np.Namespace = nsOf(np.Namespace)
		if err := ValidatePolicy(&np); err != nil {
			return fmt.Errorf("%s: %w%s", where, err, boolHint(err))
		}
		if err := l.claim("NetworkPolicy "+id, file, where); err != nil {
			return err
		}
		l.Input.Policies = append(l.Input.Policies, np)
	case tm.Kind == "Namespace" || tm.Kind == "Pod" || tm.Kind == "NetworkPolicy":
		return fmt.Errorf("%s: unsupported apiVersion %q", where, tm.APIVersion)
	default:
		l.Skipped = append(l.Skipped, where+": skipped (only Namespace, Pod and NetworkPolicy are read)")
	}
	return nil
}

func (l *Loader) claim(key, file, where string) error {
	if l.seen == nil {
		l.seen = map[string]string{}
	}
	if prev, ok := l.seen[key]; ok {
		return fmt.Errorf("%s: defined twice (also in %s)", where, prev)
	}
	l.seen[key] = file
	return nil
}

// checkPod rejects what Compile would otherwise only report: addresses that do not
// parse, and container ports it cannot use.
func checkPod(p *corev1.Pod) error {
	if p.Name == "" {
		return errors.New("metadata.name is empty")
	}
	var errs []error
	podIPs(p, func(err error) { errs = append(errs, err) })
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for ci, c := range p.Spec.Containers {
		for pi, cp := range c.Ports {
			field := fmt.Sprintf("spec.containers[%d].ports[%d]", ci, pi)
			if cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				return fmt.Errorf("%s.containerPort: %d is not in 1-65535", field, cp.ContainerPort)
			}
			if cp.Protocol != "" {
				if _, err := protocolOf(&cp.Protocol); err != nil {
					return fmt.Errorf("%s.protocol: %w", field, err)
				}
			}
		}
	}
	return nil
}

// boolHint explains the classic YAML trap behind "cannot unmarshal bool into ... string".
func boolHint(err error) string {
	if strings.Contains(err.Error(), "unmarshal bool into") {
		return " (in YAML a bare y, n, yes, no, on or off is a boolean: quote it)"
	}
	return ""
}
