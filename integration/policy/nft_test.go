package policy_test

import (
	"fmt"
	"os/exec"
	"strings"
)

// nftApply runs `nft -f -` with script in the calling thread's network namespace.
func nftApply(script string) error {
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %v: %s", err, out)
	}
	return nil
}
