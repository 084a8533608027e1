package wg

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/patronus/patronus/dataplane/nlhandle"
)

// Mode selects the implementation.
type Mode string

// Modes.
const (
	ModeAuto      Mode = ""          // kernel if the kernel can create wireguard links, else userspace
	ModeKernel    Mode = "kernel"    // fail when the kernel has no wireguard module
	ModeUserspace Mode = "userspace" // always the embedded implementation
)

// Options says where and how the device is made.
type Options struct {
	// NetNS is the path of the network namespace the interface and its UDP socket live in;
	// "" means the caller's (the agent's host namespace in production).
	NetNS  string
	Mode   Mode
	Logger *slog.Logger
}

// Open creates (or adopts) the device described by spec and returns it.
func Open(o Options, spec Spec) (Device, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if spec.Name == "" || len(spec.Name) > 15 {
		return nil, fmt.Errorf("wg: interface name %q must have 1 to 15 characters", spec.Name)
	}
	var nsh ns.NetNS
	if o.NetNS != "" {
		var err error
		if nsh, err = ns.GetNS(o.NetNS); err != nil {
			return nil, fmt.Errorf("wg: netns %s: %w", o.NetNS, err)
		}
	}
	var d Device
	if o.Mode != ModeUserspace {
		k, err := openKernel(o, nsh, spec)
		switch {
		case err == nil:
			d = k
		case errors.Is(err, ErrNoKernelModule) && o.Mode == ModeAuto:
			o.Logger.Info("no wireguard kernel module: using the userspace implementation", "interface", spec.Name)
		default:
			closeNS(nsh)
			return nil, err
		}
	}
	if d == nil {
		d = &userspace{o: o, nsh: nsh, log: o.Logger.With("interface", spec.Name)}
	}
	if err := d.Ensure(spec); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func closeNS(n ns.NetNS) {
	if n != nil {
		n.Close()
	}
}

// inNS runs f in the device's namespace on a locked thread (or directly when none).
func inNS(n ns.NetNS, f func() error) error {
	if n == nil {
		return f()
	}
	return n.Do(func(ns.NetNS) error { return f() })
}

// handle opens a netlink handle in the namespace (no thread switches namespace).
func handle(n ns.NetNS) (*netlink.Handle, error) {
	if n == nil {
		return nlhandle.Open("")
	}
	return nlhandle.Open(n.Path())
}

func mtuOf(s Spec) int {
	if s.MTU > 0 {
		return s.MTU
	}
	return DefaultMTU
}

// ---- userspace ----

type userspace struct {
	o       Options
	nsh     ns.NetNS
	log     *slog.Logger
	applies atomic.Uint64
	hold    keepaliveHold

	mu   sync.Mutex
	name string
	dev  *device.Device
	tun  tun.Device
}

// nsBind opens the device's UDP sockets inside the target namespace. The device reopens
// its bind from its own goroutines (when the TUN comes up, when the port changes), which
// run in whatever namespace their thread is in, so the switch must happen here.
type nsBind struct {
	conn.Bind
	nsh ns.NetNS
}

func (b nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	if derr := inNS(b.nsh, func() error {
		fns, actual, err = b.Bind.Open(port)
		return nil
	}); derr != nil {
		return nil, 0, derr
	}
	return fns, actual, err
}

// nsTUN reads the TUN's MTU inside its namespace: the implementation asks by interface
// name through a socket of the calling thread's namespace, which for a device in another
// namespace finds no such interface (and WireGuard then assumes 1420 for padding).
type nsTUN struct {
	tun.Device
	nsh ns.NetNS
}

func (t nsTUN) MTU() (mtu int, err error) {
	if derr := inNS(t.nsh, func() error {
		mtu, err = t.Device.MTU()
		return nil
	}); derr != nil {
		return 0, derr
	}
	return mtu, err
}

func wgLogger(l *slog.Logger) *device.Logger {
	return &device.Logger{
		Verbosef: func(f string, a ...any) { l.Debug(fmt.Sprintf(f, a...)) },
		Errorf:   func(f string, a ...any) { l.Warn(fmt.Sprintf(f, a...)) },
	}
}

func (u *userspace) Name() string    { return u.name }
func (u *userspace) Applies() uint64 { return u.applies.Load() }

func (u *userspace) Ensure(s Spec) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.dev == nil {
		var t tun.Device
		// The TUN is created by an ioctl in the namespace of the calling thread; the
		// device's goroutines keep working afterwards because they use its file.
		err := inNS(u.nsh, func() error {
			var err error
			t, err = tun.CreateTUN(s.Name, mtuOf(s))
			return err
		})
		if err != nil {
			return fmt.Errorf("wg: create TUN %s: %w", s.Name, err)
		}
		if u.nsh != nil {
			t = nsTUN{Device: t, nsh: u.nsh}
		}
		u.tun, u.name = t, s.Name
		u.dev = device.NewDevice(t, nsBind{Bind: conn.NewDefaultBind(), nsh: u.nsh}, wgLogger(u.log))
		cfg := wgtypes.Config{PrivateKey: &s.PrivateKey, ListenPort: &s.ListenPort}
		if err := u.dev.IpcSet(encodeConfig(cfg)); err != nil {
			return fmt.Errorf("wg: configure %s: %w", s.Name, err)
		}
		u.applies.Add(1)
		h, err := handle(u.nsh)
		if err != nil {
			return fmt.Errorf("wg: netlink: %w", err)
		}
		defer h.Close()
		l, err := h.LinkByName(s.Name)
		if err == nil {
			err = h.LinkSetUp(l)
		}
		if err != nil {
			return fmt.Errorf("wg: set %s up: %w", s.Name, err)
		}
		if err := u.dev.Up(); err != nil {
			return fmt.Errorf("wg: start %s: %w", s.Name, err)
		}
		u.log.Info("userspace wireguard device created", "port", s.ListenPort, "mtu", mtuOf(s), "public_key", s.PrivateKey.PublicKey().String())
		return nil
	}
	if s.Name != u.name {
		return fmt.Errorf("wg: device is %s, cannot become %s", u.name, s.Name)
	}
	cur, err := u.stateLocked()
	if err != nil {
		return err
	}
	var cfg wgtypes.Config
	if cur.PrivateKey != s.PrivateKey {
		cfg.PrivateKey = &s.PrivateKey
	}
	if cur.ListenPort != s.ListenPort && s.ListenPort != 0 {
		cfg.ListenPort = &s.ListenPort
	}
	if cfg.PrivateKey != nil || cfg.ListenPort != nil {
		if err := u.dev.IpcSet(encodeConfig(cfg)); err != nil {
			return fmt.Errorf("wg: configure %s: %w", s.Name, err)
		}
		u.applies.Add(1)
	}
	if m, err := u.tun.MTU(); err == nil && m != mtuOf(s) {
		h, err := handle(u.nsh)
		if err != nil {
			return fmt.Errorf("wg: netlink: %w", err)
		}
		defer h.Close()
		l, err := h.LinkByName(s.Name)
		if err == nil {
			err = h.LinkSetMTU(l, mtuOf(s))
		}
		if err != nil {
			return fmt.Errorf("wg: set MTU of %s: %w", s.Name, err)
		}
	}
	return nil
}

func (u *userspace) stateLocked() (*wgtypes.Device, error) {
	if u.dev == nil {
		return nil, errors.New("wg: device not created")
	}
	text, err := u.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("wg: read %s: %w", u.name, err)
	}
	return decodeState(u.name, text)
}

func (u *userspace) State() (*wgtypes.Device, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.stateLocked()
}

func (u *userspace) Configure(peers []Peer) (Changes, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	cur, err := u.stateLocked()
	if err != nil {
		return Changes{}, err
	}
	peers, held := u.hold.apply(cur, peers, time.Now())
	cfg, ch, ok, err := Diff(cur, peers)
	ch.Held = held
	if err != nil || !ok {
		return Changes{Held: held}, err
	}
	if err := u.dev.IpcSet(encodeConfig(cfg)); err != nil {
		return Changes{Held: held}, fmt.Errorf("wg: configure peers of %s: %w", u.name, err)
	}
	u.applies.Add(1)
	u.log.Info("wireguard peers changed", "added", len(ch.Added), "updated", len(ch.Updated), "removed", len(ch.Removed), "keepaliveHeld", len(held))
	return ch, nil
}

func (u *userspace) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.dev != nil {
		u.dev.Close() // closes the TUN: the interface and its routes disappear
		u.dev = nil
	}
	closeNS(u.nsh)
	u.nsh = nil
	return nil
}

// ---- kernel ----

type kernel struct {
	nsh     ns.NetNS
	name    string
	client  *wgctrl.Client
	log     *slog.Logger
	applies atomic.Uint64
	hold    keepaliveHold
	mu      sync.Mutex
}

// openKernel creates the wireguard link; ErrNoKernelModule when the kernel cannot.
func openKernel(o Options, nsh ns.NetNS, s Spec) (*kernel, error) {
	h, err := handle(nsh)
	if err != nil {
		return nil, fmt.Errorf("wg: netlink: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(s.Name)
	if err == nil && l.Type() != "wireguard" {
		return nil, fmt.Errorf("wg: %s exists and is a %s link", s.Name, l.Type())
	}
	if err != nil {
		err = h.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: s.Name, MTU: mtuOf(s)}})
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENODEV) {
			return nil, ErrNoKernelModule
		}
		if err != nil {
			return nil, fmt.Errorf("wg: create %s: %w", s.Name, err)
		}
	}
	k := &kernel{nsh: nsh, name: s.Name, log: o.Logger.With("interface", s.Name)}
	// The generic netlink socket is bound to the namespace it is opened in.
	if err := inNS(nsh, func() error {
		var err error
		k.client, err = wgctrl.New()
		return err
	}); err != nil {
		return nil, fmt.Errorf("wg: wgctrl: %w", err)
	}
	return k, nil
}

func (k *kernel) Name() string    { return k.name }
func (k *kernel) Applies() uint64 { return k.applies.Load() }

func (k *kernel) Ensure(s Spec) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	cur, err := k.client.Device(k.name)
	if err != nil {
		return fmt.Errorf("wg: read %s: %w", k.name, err)
	}
	var cfg wgtypes.Config
	if cur.PrivateKey != s.PrivateKey {
		cfg.PrivateKey = &s.PrivateKey
	}
	if cur.ListenPort != s.ListenPort && s.ListenPort != 0 {
		cfg.ListenPort = &s.ListenPort
	}
	if cfg.PrivateKey != nil || cfg.ListenPort != nil {
		if err := k.client.ConfigureDevice(k.name, cfg); err != nil {
			return fmt.Errorf("wg: configure %s: %w", k.name, err)
		}
		k.applies.Add(1)
	}
	h, err := handle(k.nsh)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(k.name)
	if err != nil {
		return fmt.Errorf("wg: %s: %w", k.name, err)
	}
	if l.Attrs().MTU != mtuOf(s) {
		if err := h.LinkSetMTU(l, mtuOf(s)); err != nil {
			return fmt.Errorf("wg: MTU of %s: %w", k.name, err)
		}
	}
	return h.LinkSetUp(l)
}

func (k *kernel) State() (*wgtypes.Device, error) {
	d, err := k.client.Device(k.name)
	if err != nil {
		return nil, fmt.Errorf("wg: read %s: %w", k.name, err)
	}
	return d, nil
}

func (k *kernel) Configure(peers []Peer) (Changes, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	cur, err := k.State()
	if err != nil {
		return Changes{}, err
	}
	peers, held := k.hold.apply(cur, peers, time.Now())
	cfg, ch, ok, err := Diff(cur, peers)
	ch.Held = held
	if err != nil || !ok {
		return Changes{Held: held}, err
	}
	if err := k.client.ConfigureDevice(k.name, cfg); err != nil {
		return Changes{Held: held}, fmt.Errorf("wg: configure peers of %s: %w", k.name, err)
	}
	k.applies.Add(1)
	return ch, nil
}

// Close keeps the kernel link (it survives an agent restart, so pods keep their tunnel)
// and releases the client.
func (k *kernel) Close() error {
	err := k.client.Close()
	closeNS(k.nsh)
	return err
}
