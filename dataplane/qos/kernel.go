package qos

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Kernel is the traffic-control surface Apply needs; Netlink is the real one.
type Kernel interface {
	// Installed returns the HTB classes under root qdisc 1: of the link (nil, nil when
	// the root qdisc is something else or absent).
	Installed(link string) ([]Class, error)
	// Program replaces the root qdisc of link with the plan (qdisc, classes, filters).
	Program(link string, p Plan) error
	// Remove deletes the root qdisc 1: of link if it is an HTB.
	Remove(link string) error
}

// Apply makes link's shaping match spec. Nothing is touched when the installed classes
// already match (filters are always created with their classes, so they match too); a
// change rebuilds the whole tree, which resets the queues once: guarantees change when
// pods come and go, not per packet.
func Apply(k Kernel, link string, spec Spec, log *slog.Logger) (changed bool, err error) {
	p, err := NewPlan(spec)
	if err != nil {
		return false, err
	}
	cur, err := k.Installed(link)
	if err != nil {
		return false, fmt.Errorf("qos %s: %w", link, err)
	}
	if sameClasses(cur, p.Classes) {
		return false, nil
	}
	if log != nil {
		log.Info("programming HTB guarantees", "link", link, "capacity_mbps", spec.RateMbps, "guarantees", len(p.PodClass))
	}
	if err := k.Program(link, p); err != nil {
		return false, fmt.Errorf("qos %s: %w", link, err)
	}
	return true, nil
}

func sameClasses(cur, want []Class) bool {
	if len(cur) != len(want) {
		return false
	}
	byMinor := map[uint16]Class{}
	for _, c := range cur {
		byMinor[c.Minor] = c
	}
	for _, w := range want {
		c, ok := byMinor[w.Minor]
		// Rates come back in bytes per second: compare at that precision.
		if !ok || c.Parent != w.Parent || c.RateBps/8 != w.RateBps/8 || c.CeilBps/8 != w.CeilBps/8 {
			return false
		}
	}
	return true
}

// Netlink programs the kernel of the calling thread's network namespace.
type Netlink struct{}

const rootHandle = 1

func linkIndex(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", name, err)
	}
	return l, nil
}

func rootHTB(l netlink.Link) (bool, error) {
	qs, err := netlink.QdiscList(l)
	if err != nil {
		return false, err
	}
	for _, q := range qs {
		a := q.Attrs()
		if a.Parent == netlink.HANDLE_ROOT && a.Handle == netlink.MakeHandle(rootHandle, 0) && q.Type() == "htb" {
			return true, nil
		}
	}
	return false, nil
}

// Installed implements Kernel.
func (Netlink) Installed(link string) ([]Class, error) {
	l, err := linkIndex(link)
	if err != nil {
		return nil, err
	}
	ok, err := rootHTB(l)
	if err != nil || !ok {
		return nil, err
	}
	cs, err := netlink.ClassList(l, netlink.MakeHandle(rootHandle, 0))
	if err != nil {
		return nil, err
	}
	var out []Class
	for _, c := range cs {
		h, ok := c.(*netlink.HtbClass)
		if !ok {
			continue
		}
		a := h.Attrs()
		parent := uint16(0)
		// Top-level classes are dumped with parent TC_H_ROOT.
		if a.Parent != netlink.MakeHandle(rootHandle, 0) && a.Parent != netlink.HANDLE_ROOT {
			parent = uint16(a.Parent & 0xffff)
		}
		out = append(out, Class{Minor: uint16(a.Handle & 0xffff), Parent: parent, RateBps: h.Rate * 8, CeilBps: h.Ceil * 8})
	}
	return out, nil
}

// Program implements Kernel.
func (Netlink) Program(link string, p Plan) error {
	l, err := linkIndex(link)
	if err != nil {
		return err
	}
	q := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(rootHandle, 0), Parent: netlink.HANDLE_ROOT})
	q.Defcls = uint32(p.Default)
	// A new root qdisc starts with no classes or filters. An HTB root is deleted first: the
	// kernel treats "replace" of the same handle as a change, which HTB refuses.
	if ok, err := rootHTB(l); err != nil {
		return err
	} else if ok {
		if err := netlink.QdiscDel(q); err != nil {
			return fmt.Errorf("deleting old htb qdisc: %w", err)
		}
	}
	if err := netlink.QdiscReplace(q); err != nil {
		return fmt.Errorf("htb qdisc: %w", err)
	}
	for _, c := range p.Classes {
		parent := netlink.MakeHandle(rootHandle, c.Parent)
		if c.Parent == 0 {
			parent = netlink.MakeHandle(rootHandle, 0)
		}
		hc := netlink.NewHtbClass(netlink.ClassAttrs{LinkIndex: l.Attrs().Index, Parent: parent, Handle: netlink.MakeHandle(rootHandle, c.Minor)},
			netlink.HtbClassAttrs{Rate: c.RateBps, Ceil: c.CeilBps})
		if err := netlink.ClassReplace(hc); err != nil {
			return fmt.Errorf("htb class 1:%x: %w", c.Minor, err)
		}
	}
	for i, c := range p.PodClass {
		if err := addMarkFilter(l.Attrs().Index, uint16(i+1), c.Mark, p.Mask, netlink.MakeHandle(rootHandle, c.Minor)); err != nil {
			return fmt.Errorf("u32 mark filter %#x → 1:%x: %w", c.Mark, c.Minor, err)
		}
	}
	return nil
}

// Remove implements Kernel.
func (Netlink) Remove(link string) error {
	l, err := linkIndex(link)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	ok, err := rootHTB(l)
	if err != nil || !ok {
		return err
	}
	return netlink.QdiscDel(netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(rootHandle, 0), Parent: netlink.HANDLE_ROOT}))
}

// addMarkFilter attaches a classic cls_bpf classifier (not direct-action) to the root
// qdisc: its program returns -1 ("the filter's classid") when (skb->mark & mask) == mark
// and 0 ("no match") otherwise. This kernel has neither the fw classifier nor u32's mark
// match (CONFIG_CLS_U32_MARK: the attribute is silently ignored and the filter matches
// everything), so a four-instruction program stands in for them.
func addMarkFilter(ifindex int, prio uint16, mark, mask, classid uint32) error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "pt_qos_mark",
		Type:    ebpf.SchedCLS,
		License: "Apache-2.0",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R0, asm.R1, skbMarkOffset, asm.Word),
			asm.And.Imm32(asm.R0, int32(mask)),
			asm.JNE.Imm32(asm.R0, int32(mark), "nomatch"),
			asm.Mov.Imm(asm.R0, -1),
			asm.Return(),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("nomatch"),
			asm.Return(),
		},
	})
	if err != nil {
		return fmt.Errorf("loading classifier: %w", err)
	}
	// The filter holds its own reference to the program.
	defer prog.Close()
	return netlink.FilterAdd(&netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: netlink.MakeHandle(rootHandle, 0), Priority: prio, Protocol: unix.ETH_P_ALL},
		Fd:          prog.FD(),
		Name:        fmt.Sprintf("pt_qos_%x", mark),
		ClassId:     classid,
	})
}

// skbMarkOffset is offsetof(struct __sk_buff, mark).
const skbMarkOffset = 8
