// Package k8senv runs a real Kubernetes control plane (etcd and kube-apiserver, no kubelet
// or controller-manager) on loopback for tests. Each Cluster has its own PKI, data
// directory and ports chosen at run time, so several clusters run side by side. Pods,
// Services, CRDs and RBAC behave as in any cluster; nothing schedules or runs pods.
//
// Binaries come from PATRONUS_K8S_BIN (a directory holding etcd, kube-apiserver and
// kubectl), else from ./scripts/build-k8s.sh at the module root, which builds them once
// and caches them.
//
// Typical use:
//
//	c := k8senv.Start(t, k8senv.WithMCSCRDs())
//	cs := c.Client()                                 // admin clientset
//	kc := c.AgentClient()                            // the same, as the agent's packages take it (kube/kclient)
//	saCfg, kubeconfig, err := c.InstallPatronus(ctx) // manifests/ + the agent's own token
//	c.StopAPIServer(); err = c.StartAPIServer()      // same port, same data
//
// Set PATRONUS_K8S_KEEP=1 to keep a cluster's directory (PKI, etcd data, etcd.log,
// kube-apiserver.log) after the test; failed tests print the logs' tails.
package k8senv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/patronus/patronus/kube/kclient"
)

// EnvBinDir names the environment variable holding the directory with etcd,
// kube-apiserver and kubectl.
const EnvBinDir = "PATRONUS_K8S_BIN"

// EnvKeep names the environment variable that, when set, keeps each cluster's directory
// (PKI, etcd data, logs) after the test instead of removing it.
const EnvKeep = "PATRONUS_K8S_KEEP"

// Default values of the options.
const (
	DefaultServiceCIDR = "10.96.0.0/16"
	DefaultAuthzMode   = "RBAC"
)

// Option changes how Start sets a cluster up.
type Option func(*options)

type options struct {
	serviceCIDR string
	authzMode   string
	mcsCRDs     bool
	binDir      string
	readyWait   time.Duration
}

// WithServiceCIDR sets --service-cluster-ip-range (default DefaultServiceCIDR).
func WithServiceCIDR(cidr string) Option { return func(o *options) { o.serviceCIDR = cidr } }

// WithAuthorizationMode sets --authorization-mode (default "RBAC"; "Node,RBAC" also works).
func WithAuthorizationMode(mode string) Option { return func(o *options) { o.authzMode = mode } }

// WithMCSCRDs installs the Multi-Cluster Services API CRDs (ServiceExport, ServiceImport
// from sigs.k8s.io/mcs-api) and waits until they are Established before Start returns.
func WithMCSCRDs() Option { return func(o *options) { o.mcsCRDs = true } }

// WithBinDir uses the binaries in dir instead of PATRONUS_K8S_BIN or the build script.
func WithBinDir(dir string) Option { return func(o *options) { o.binDir = dir } }

// WithReadyTimeout bounds how long Start and Restart wait for /readyz (default 90s: two
// clusters starting at once on two cores take well under that).
func WithReadyTimeout(d time.Duration) Option { return func(o *options) { o.readyWait = d } }

// Cluster is one running control plane. Its methods are safe for concurrent use.
type Cluster struct {
	t    testing.TB
	opts options
	dir  string
	pki  *pki
	bin  string

	etcdClientPort, etcdPeerPort, apiPort int
	kubeconfig                            string
	rest                                  *rest.Config
	startDuration                         time.Duration

	mu        sync.Mutex
	etcd      *process
	apiserver *process
}

// Start runs etcd and kube-apiserver, waits until the API server is ready and the
// kube-system and default namespaces exist, writes an admin kubeconfig, and registers a
// cleanup that kills both processes (and prints their logs when the test failed). It
// calls t.Fatal when the control plane cannot start, saying why; in -short mode it skips.
// Call it from the test's goroutine; use New or StartN to start clusters concurrently.
func Start(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	skipIfShort(t)
	c, err := New(t, opts...)
	if err != nil {
		t.Fatalf("k8senv: %v", err)
	}
	return c
}

// StartN starts n independent clusters concurrently (multi-cluster tests) and fails the
// test if any cannot start.
func StartN(t testing.TB, n int, opts ...Option) []*Cluster {
	t.Helper()
	skipIfShort(t)
	clusters := make([]*Cluster, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { clusters[i], errs[i] = New(t, opts...) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("k8senv: %v", err)
	}
	return clusters
}

func skipIfShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("k8senv: skipped in -short mode (starts etcd and kube-apiserver)")
	}
}

// New is Start returning an error instead of failing the test, so it may run on any
// goroutine. The cluster is still stopped by t's cleanup. It does not look at -short.
func New(t testing.TB, opts ...Option) (*Cluster, error) {
	o := options{serviceCIDR: DefaultServiceCIDR, authzMode: DefaultAuthzMode, readyWait: 90 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	bin, err := findBinaries(o.binDir)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "k8senv-")
	if err != nil {
		return nil, fmt.Errorf("creating cluster directory: %w", err)
	}
	c := &Cluster{t: t, opts: o, dir: dir, kubeconfig: filepath.Join(dir, "admin.kubeconfig"), bin: bin}
	t.Cleanup(c.cleanup)
	if c.pki, err = newPKI(dir); err != nil {
		return nil, fmt.Errorf("generating PKI: %w", err)
	}

	began := time.Now()
	// A port found free can be taken by someone else before the process binds it; the
	// logs then say "address already in use" and a fresh set of ports is tried.
	const attempts = 3
	for i := 1; ; i++ {
		err = c.startFresh()
		if err == nil {
			break
		}
		c.stopAll(0)
		if i == attempts || !strings.Contains(c.etcd.tail(200)+c.apiserver.tail(200), "address already in use") {
			return nil, fmt.Errorf("starting control plane in %s: %w\n--- etcd log (tail) ---\n%s\n--- kube-apiserver log (tail) ---\n%s",
				dir, err, c.etcd.tail(40), c.apiserver.tail(40))
		}
		t.Logf("k8senv: port taken while starting, retrying with new ports: %v", err)
	}
	c.rest = c.adminConfig()
	if err := writeKubeconfig(c.kubeconfig, c.rest.Host, c.pki.caPEM, &clientcmdapi.AuthInfo{
		ClientCertificateData: c.pki.adminCertPEM, ClientKeyData: c.pki.adminKeyPEM,
	}); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.readyWait)
	defer cancel()
	if err := c.waitNamespaces(ctx, "kube-system", "default"); err != nil {
		return nil, err
	}
	if o.mcsCRDs {
		if err := c.InstallMCSCRDs(ctx); err != nil {
			return nil, err
		}
	}
	c.startDuration = time.Since(began)
	t.Logf("k8senv: cluster at %s ready in %s (dir %s)", c.rest.Host, c.startDuration.Round(time.Millisecond), dir)
	return c, nil
}

// startFresh picks ports and starts both processes.
func (c *Cluster) startFresh() error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	c.etcdClientPort, c.etcdPeerPort, c.apiPort = ports[0], ports[1], ports[2]
	c.etcd = &process{name: "etcd", path: filepath.Join(c.bin, "etcd"), args: c.etcdArgs(), logPath: filepath.Join(c.dir, "etcd.log")}
	c.apiserver = &process{name: "kube-apiserver", path: filepath.Join(c.bin, "kube-apiserver"), args: c.apiserverArgs(), logPath: filepath.Join(c.dir, "kube-apiserver.log")}
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.readyWait)
	defer cancel()
	if err := c.startEtcd(ctx); err != nil {
		return err
	}
	return c.startAPIServer(ctx)
}

func (c *Cluster) etcdArgs() []string {
	client := "http://127.0.0.1:" + strconv.Itoa(c.etcdClientPort)
	peer := "http://127.0.0.1:" + strconv.Itoa(c.etcdPeerPort)
	return []string{
		"--name=patronus-test",
		"--data-dir=" + filepath.Join(c.dir, "etcd-data"),
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=patronus-test=" + peer,
		"--unsafe-no-fsync", // tests throw the data away; fsync only costs time
		"--log-level=warn",
	}
}

func (c *Cluster) apiserverArgs() []string {
	return []string{
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(c.etcdClientPort),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.apiPort),
		// 1.37 refuses a loopback advertise address unless nothing reconciles the
		// kubernetes Service's endpoints.
		"--endpoint-reconciler-type=none",
		"--tls-cert-file=" + c.pki.servingCert,
		"--tls-private-key-file=" + c.pki.servKey,
		"--client-ca-file=" + c.pki.caCert,
		"--authorization-mode=" + c.opts.authzMode,
		"--service-cluster-ip-range=" + c.opts.serviceCIDR,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + c.pki.saPub,
		"--service-account-signing-key-file=" + c.pki.saKey,
		// No controller-manager creates the default ServiceAccount, so the admission
		// plugin that requires it would reject every pod.
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true", // the Patronus DaemonSet is privileged
		"--cert-dir=" + filepath.Join(c.dir, "apiserver-certs"),
		"--profiling=false",
		"--v=1",
	}
}

func (c *Cluster) startEtcd(ctx context.Context) error {
	if err := c.etcd.start(); err != nil {
		return err
	}
	url := "http://127.0.0.1:" + strconv.Itoa(c.etcdClientPort) + "/health"
	return poll(ctx, c.etcd, func() error {
		resp, err := http.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("etcd /health: %s", resp.Status)
		}
		return nil
	})
}

func (c *Cluster) startAPIServer(ctx context.Context) error {
	if err := c.apiserver.start(); err != nil {
		return err
	}
	hc, err := rest.HTTPClientFor(c.adminConfig())
	if err != nil {
		return fmt.Errorf("building readiness client: %w", err)
	}
	hc.Timeout = 5 * time.Second
	url := "https://127.0.0.1:" + strconv.Itoa(c.apiPort) + "/readyz"
	return poll(ctx, c.apiserver, func() error {
		resp, err := hc.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("kube-apiserver /readyz: %s", resp.Status)
		}
		return nil
	})
}

// poll calls check every 100ms until it succeeds, the process exits, or ctx ends.
func poll(ctx context.Context, p *process, check func() error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited while starting: %w", p.name, p.exitError())
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last check: %v)", p.name, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

func (c *Cluster) adminConfig() *rest.Config {
	return &rest.Config{
		Host: "https://127.0.0.1:" + strconv.Itoa(c.apiPort),
		TLSClientConfig: rest.TLSClientConfig{
			CAData: c.pki.caPEM, CertData: c.pki.adminCertPEM, KeyData: c.pki.adminKeyPEM,
		},
		// Tests create objects in bursts; the default 5 QPS makes them slow, not safer.
		QPS:   200,
		Burst: 400,
	}
}

func (c *Cluster) waitNamespaces(ctx context.Context, names ...string) error {
	cs, err := kubernetes.NewForConfig(c.rest)
	if err != nil {
		return fmt.Errorf("building client: %w", err)
	}
	for _, ns := range names {
		if err := poll(ctx, c.apiserver, func() error {
			_, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			return err
		}); err != nil {
			return fmt.Errorf("waiting for namespace %s: %w", ns, err)
		}
	}
	return nil
}

// RESTConfig returns a new admin (system:masters) client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.rest) }

// Client returns an admin clientset.
func (c *Cluster) Client() kubernetes.Interface {
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		c.t.Fatalf("k8senv: building client: %v", err)
	}
	return cs
}

// AgentClient returns an admin client of the kind the agent uses (package kclient), for
// handing to the agent's packages (mcs, nodenet) in tests.
func (c *Cluster) AgentClient() *kclient.Client {
	kc, err := kclient.New(c.RESTConfig())
	if err != nil {
		c.t.Fatalf("k8senv: building agent client: %v", err)
	}
	return kc
}

// Kubeconfig returns the path of the admin kubeconfig.
func (c *Cluster) Kubeconfig() string { return c.kubeconfig }

// Host returns the API server URL (https://127.0.0.1:PORT); it stays the same across
// StopAPIServer/StartAPIServer, Stop/Restart.
func (c *Cluster) Host() string { return c.rest.Host }

// Dir returns the cluster's temporary directory (PKI, etcd data, logs: etcd.log,
// kube-apiserver.log); it is removed when the test ends unless PATRONUS_K8S_KEEP is set.
func (c *Cluster) Dir() string { return c.dir }

// BinDir returns the directory holding etcd, kube-apiserver and kubectl.
func (c *Cluster) BinDir() string { return c.bin }

// StartDuration is how long Start took, CRDs included.
func (c *Cluster) StartDuration() time.Duration { return c.startDuration }

// Kubectl runs kubectl with the admin kubeconfig and returns its standard output. The
// error includes standard error.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	return c.KubectlAs(c.kubeconfig, args...)
}

// KubectlAs runs kubectl with the given kubeconfig (for example one from
// ServiceAccountKubeconfig).
func (c *Cluster) KubectlAs(kubeconfig string, args ...string) (string, error) {
	// A bound, so a kubectl stuck on a stopped API server fails the test instead of hanging it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "kubectl"), append([]string{"--kubeconfig=" + kubeconfig}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// ServiceAccountKubeconfig asks the API server for a token of an existing ServiceAccount
// (TokenRequest, valid one hour) and returns a client configuration using only that token,
// plus the path of a kubeconfig file with the same credentials. Use it to prove what the
// ServiceAccount may and may not do.
func (c *Cluster) ServiceAccountKubeconfig(ctx context.Context, namespace, name string) (*rest.Config, string, error) {
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		return nil, "", fmt.Errorf("building client: %w", err)
	}
	ttl := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &ttl},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("requesting token for ServiceAccount %s/%s: %w", namespace, name, err)
	}
	cfg := &rest.Config{
		Host:            c.rest.Host,
		BearerToken:     tr.Status.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.pki.caPEM},
		QPS:             c.rest.QPS,
		Burst:           c.rest.Burst,
	}
	path := filepath.Join(c.dir, fmt.Sprintf("sa-%s-%s.kubeconfig", namespace, name))
	if err := writeKubeconfig(path, cfg.Host, c.pki.caPEM, &clientcmdapi.AuthInfo{Token: tr.Status.Token}); err != nil {
		return nil, "", err
	}
	return cfg, path, nil
}

// StopAPIServer stops kube-apiserver gracefully (SIGTERM) and leaves etcd running, so
// clients see the API go away and come back with StartAPIServer.
func (c *Cluster) StopAPIServer() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.apiserver.stop(apiServerGrace)
}

// StartAPIServer starts kube-apiserver again on the same port with the same data and
// waits for /readyz. It does nothing if the API server runs.
func (c *Cluster) StartAPIServer() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.apiserver.running() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.readyWait)
	defer cancel()
	if err := c.startAPIServer(ctx); err != nil {
		return fmt.Errorf("restarting kube-apiserver on port %d: %w\n%s", c.apiPort, err, c.apiserver.tail(40))
	}
	return nil
}

// Stop stops kube-apiserver and etcd gracefully, keeping the data; Restart brings them
// back. The test's cleanup stops them anyway.
func (c *Cluster) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopAll(30 * time.Second)
}

// Restart stops whatever still runs and starts etcd and kube-apiserver again on the same
// ports with the same data, waiting for /readyz.
func (c *Cluster) Restart() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopAll(30 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.readyWait)
	defer cancel()
	if err := c.startEtcd(ctx); err != nil {
		return fmt.Errorf("restarting etcd: %w\n%s", err, c.etcd.tail(40))
	}
	if err := c.startAPIServer(ctx); err != nil {
		return fmt.Errorf("restarting kube-apiserver: %w\n%s", err, c.apiserver.tail(40))
	}
	return nil
}

// apiServerGrace bounds kube-apiserver's graceful shutdown: with watches connected it logs
// its shutdown steps and then waits for them for a long time, which made every restart in
// the tests a 30 s outage (and client-go's reflector backoff grows with the outage).
const apiServerGrace = 5 * time.Second

func (c *Cluster) stopAll(grace time.Duration) {
	if c.apiserver != nil {
		c.apiserver.stop(min(grace, apiServerGrace))
	}
	if c.etcd != nil {
		c.etcd.stop(grace)
	}
}

func (c *Cluster) cleanup() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopAll(0)
	if c.t.Failed() && c.etcd != nil {
		c.t.Logf("k8senv: test failed; control plane logs (from %s):\n--- etcd ---\n%s\n--- kube-apiserver ---\n%s",
			c.dir, c.etcd.tail(30), c.apiserver.tail(60))
	}
	if os.Getenv(EnvKeep) != "" {
		c.t.Logf("k8senv: %s set, keeping %s", EnvKeep, c.dir)
		return
	}
	if err := os.RemoveAll(c.dir); err != nil {
		c.t.Errorf("k8senv: removing %s: %v", c.dir, err)
	}
}

func writeKubeconfig(path, host string, caPEM []byte, auth *clientcmdapi.AuthInfo) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["patronus-test"] = &clientcmdapi.Cluster{Server: host, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["user"] = auth
	cfg.Contexts["patronus-test"] = &clientcmdapi.Context{Cluster: "patronus-test", AuthInfo: "user"}
	cfg.CurrentContext = "patronus-test"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}

// findBinaries returns the directory with etcd, kube-apiserver and kubectl: dir if set,
// else $PATRONUS_K8S_BIN, else the output of the module's scripts/build-k8s.sh (which
// builds on first use; its progress goes to stderr so a slow first run explains itself).
func findBinaries(dir string) (string, error) {
	source := "WithBinDir"
	if dir == "" {
		dir, source = os.Getenv(EnvBinDir), EnvBinDir
	}
	if dir == "" {
		root, err := moduleRoot()
		if err != nil {
			return "", fmt.Errorf("%s is not set and the module root was not found: %w", EnvBinDir, err)
		}
		cmd := exec.Command(filepath.Join(root, "scripts", "build-k8s.sh"))
		cmd.Dir = root
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("%s is not set and scripts/build-k8s.sh failed: %w", EnvBinDir, err)
		}
		dir, source = strings.TrimSpace(string(out)), "scripts/build-k8s.sh"
	}
	for _, name := range []string{"etcd", "kube-apiserver", "kubectl"} {
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%s (from %s) has no executable %s", dir, source, name)
		}
	}
	return dir, nil
}

// moduleRoot walks up from the working directory to the directory whose go.mod declares
// the Patronus module (tests run in their package's directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/patronus/patronus\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod for github.com/patronus/patronus above the working directory")
		}
		dir = parent
	}
}
