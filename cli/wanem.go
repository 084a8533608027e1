package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/patronus/patronus/wanem"
)

func newWanemCmd(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "wanem",
		Short: "WAN emulator: a UDP relay adding delay, jitter, loss and blackholes (tests, benchmarks, demo)",
		Long: `A userspace UDP impairment relay for kernels without netem. "run" forwards datagrams from
--listen to --target and back to the client that spoke last; delay, jitter and loss apply
to each direction (a delay of D adds 2·D to a round trip; jitter never reorders). "set"
and "show" change and read a running relay through its --control socket.`,
	}
	cmd.AddCommand(newWanemRunCmd(e), newWanemSetCmd(e), newWanemShowCmd(e))
	return cmd
}

// impairmentFlags binds --delay, --jitter, --loss and --blackhole.
type impairmentFlags struct {
	delay, jitter time.Duration
	loss          float64
	blackhole     bool
}

func (f *impairmentFlags) bind(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.DurationVar(&f.delay, "delay", 0, "one-way delay added in each direction")
	fl.DurationVar(&f.jitter, "jitter", 0, "half-width of a uniform variation around the delay")
	fl.Float64Var(&f.loss, "loss", 0, "random loss in percent (0-100), each direction")
	fl.BoolVar(&f.blackhole, "blackhole", false, "drop everything")
}

// change returns the flags the user gave.
func (f *impairmentFlags) change(cmd *cobra.Command) wanem.Change {
	var c wanem.Change
	fl := cmd.Flags()
	if fl.Changed("delay") {
		c.Delay = &f.delay
	}
	if fl.Changed("jitter") {
		c.Jitter = &f.jitter
	}
	if fl.Changed("loss") {
		c.LossPercent = &f.loss
	}
	if fl.Changed("blackhole") {
		c.Blackhole = &f.blackhole
	}
	return c
}

func newWanemRunCmd(e env) *cobra.Command {
	var listen, target, control string
	var imp impairmentFlags
	cmd := &cobra.Command{
		Use:   "run --listen ADDR --target ADDR [--control SOCKET|HOST:PORT] [impairment flags]",
		Short: "Run a relay until interrupted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if listen == "" || target == "" {
				return usagef("--listen and --target are required")
			}
			initial := imp.change(cmd).Apply(wanem.Impairment{})
			if err := initial.Validate(); err != nil {
				return usagef("%v", err)
			}
			log := slog.New(slog.NewTextHandler(e.stderr, nil))
			r, err := wanem.New(wanem.Options{Listen: listen, Target: target, Impairment: initial, Logger: log})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			errc := make(chan error, 1)
			if control != "" {
				l, err := wanem.ListenControl(control)
				if err != nil {
					return err
				}
				go func() { errc <- wanem.ServeControl(ctx, l, r) }()
			}
			fmt.Fprintf(e.stdout, "wanem: %s -> %s (delay %v, jitter %v, loss %g%%, blackhole %v)\n",
				r.Addr(), target, initial.Delay, initial.Jitter, initial.LossPercent, initial.Blackhole)
			err = r.Run(ctx)
			stop()
			if control != "" {
				if cerr := <-errc; err == nil {
					err = cerr
				}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "", "UDP address clients send to")
	f.StringVar(&target, "target", "", "UDP address to forward to")
	f.StringVar(&control, "control", "", "control API: a unix socket path or a loopback host:port")
	imp.bind(cmd)
	return cmd
}

func newWanemSetCmd(e env) *cobra.Command {
	var control string
	var imp impairmentFlags
	cmd := &cobra.Command{
		Use:   "set --control SOCKET [--delay D] [--jitter D] [--loss PCT] [--blackhole=true|false]",
		Short: "Change a running relay's impairment (flags not given keep their value)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if control == "" {
				return usagef("--control is required")
			}
			ch := imp.change(cmd)
			if err := ch.Apply(wanem.Impairment{}).Validate(); err != nil {
				return usagef("%v", err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			got, err := wanem.NewClient(control).Set(ctx, ch)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "delay %v, jitter %v, loss %g%%, blackhole %v\n", got.Delay, got.Jitter, got.LossPercent, got.Blackhole)
			return nil
		},
	}
	cmd.Flags().StringVar(&control, "control", "", "the relay's control socket or host:port")
	imp.bind(cmd)
	return cmd
}

func newWanemShowCmd(e env) *cobra.Command {
	var control, output string
	cmd := &cobra.Command{
		Use:   "show --control SOCKET [-o table|json|yaml]",
		Short: "Show a running relay's impairment and counters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if control == "" {
				return usagef("--control is required")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			c := wanem.NewClient(control)
			imp, err := c.Get(ctx)
			if err != nil {
				return err
			}
			st, err := c.Stats(ctx)
			if err != nil {
				return err
			}
			type shown struct {
				Delay       string  `json:"delay"`
				Jitter      string  `json:"jitter"`
				LossPercent float64 `json:"loss_percent"`
				Blackhole   bool    `json:"blackhole"`
			}
			v := struct {
				Impairment shown       `json:"impairment"`
				Stats      wanem.Stats `json:"stats"`
			}{shown{imp.Delay.String(), imp.Jitter.String(), imp.LossPercent, imp.Blackhole}, st}
			return printList(e.stdout, output, v, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "DELAY\tJITTER\tLOSS\tBLACKHOLE\tFORWARD IN/OUT\tREVERSE IN/OUT\tDROPPED LOSS/BLACKHOLE/OVERFLOW")
				fmt.Fprintf(tw, "%v\t%v\t%g%%\t%v\t%d/%d\t%d/%d\t%d/%d/%d\n", imp.Delay, imp.Jitter, imp.LossPercent, imp.Blackhole,
					st.ForwardIn, st.ForwardOut, st.ReverseIn, st.ReverseOut, st.DroppedLoss, st.DroppedBlackhole, st.DroppedOverflow)
			})
		},
	}
	cmd.Flags().StringVar(&control, "control", "", "the relay's control socket or host:port")
	outputFlag(cmd, &output)
	return cmd
}
