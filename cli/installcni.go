package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/patronus/patronus/cni"
	"github.com/patronus/patronus/manifests"
)

func newInstallCNICmd(e env) *cobra.Command {
	var binDir, confDir, confList string
	var noConfList bool
	cmd := &cobra.Command{
		Use:   "install-cni",
		Short: "Install this binary as the patronus-cni plugin and write the CNI network configuration",
		Long: "Copies the running binary to <bin-dir>/patronus-cni and writes <conf-dir>/10-patronus.conflist\n" +
			"(the embedded default, or --conflist), each atomically (temporary file + rename), so a runtime\n" +
			"never sees a half-written plugin or configuration. The DaemonSet's init step runs it with\n" +
			"--no-conflist: the agent writes the conflist once it knows the node's pod block, so the node\n" +
			"takes no pods before that (a default conflist would hand out addresses of another node's block).",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if noConfList && confList != "" {
				return usagef("--no-conflist and --conflist exclude each other")
			}
			conf := manifests.ConfList
			if confList != "" {
				b, err := os.ReadFile(confList)
				if err != nil {
					return fmt.Errorf("read --conflist: %w", err)
				}
				conf = b
			}
			if _, err := cni.ParseConfList(conf); err != nil {
				return fmt.Errorf("the CNI configuration is invalid, nothing installed: %w", err)
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the running binary: %w", err)
			}
			src, err := os.Open(self)
			if err != nil {
				return fmt.Errorf("open the running binary: %w", err)
			}
			defer src.Close()
			plugin := filepath.Join(binDir, cni.PluginName)
			if err := writeAtomic(plugin, src, 0o755); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "installed %s\n", plugin)
			if noConfList {
				return nil // the agent writes it (agent --manage-conflist)
			}
			dst := filepath.Join(confDir, manifests.ConfListName)
			if err := writeAtomic(dst, bytes.NewReader(conf), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "wrote %s\n", dst)
			return nil
		},
	}
	cmd.Flags().StringVar(&binDir, "bin-dir", "/opt/cni/bin", "CNI plugin directory")
	cmd.Flags().StringVar(&confDir, "conf-dir", "/etc/cni/net.d", "CNI configuration directory")
	cmd.Flags().StringVar(&confList, "conflist", "", "conflist file to install instead of the embedded default")
	cmd.Flags().BoolVar(&noConfList, "no-conflist", false, "install the plugin binary only and leave the conf dir alone (the agent writes the conflist for the node's pod block)")
	return cmd
}

// writeAtomic writes r to path through a temporary file in the same directory, synced and
// renamed over path: readers see the old file or the whole new one, never a part.
func writeAtomic(path string, r io.Reader, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temporary file in %s: %w", dir, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, r); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("install %s: %w", path, err)
	}
	ok = true
	return nil
}
