// Command patronus is the Patronus node agent, its CLI and, when invoked as
// patronus-cni with CNI_COMMAND set, the CNI plugin. main only dispatches on argv[0]
// (docs/CONTRACT.md, "Binary and dispatch").
package main

import (
	"os"
	"path/filepath"

	"github.com/patronus/patronus/cli"
	"github.com/patronus/patronus/cni"
)

func main() {
	if filepath.Base(os.Args[0]) == cni.PluginName && os.Getenv("CNI_COMMAND") != "" {
		cni.Main()
		return
	}
	os.Exit(cli.Main(os.Args[1:]))
}
