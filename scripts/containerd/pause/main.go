// Command pause is the pod sandbox's infrastructure process for the local test and demo
// images (scripts/images.sh): it holds the pod's namespaces open, reaps orphaned children
// as PID 1 must, and exits cleanly on SIGTERM or SIGINT so `crictl stopp` is quick.
// No registry can be reached here, so the project builds its own pause image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Reap every exited child; processes joined into the pod may be reparented to us.
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
