// Package cli is the patronus command line: the agent, the operator commands that talk to
// it over its local socket, and the offline tools (policy matrix, install-cni).
//
// Conventions (docs/CONTRACT.md): every listing takes -o table|json|yaml; exit codes are
// 0 ok, 1 error, 2 usage.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// usageError marks an error as a usage error (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usagef returns a usage error.
func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// env is what every command needs from the process, passed explicitly so commands can be
// tested without touching the real stdout or environment.
type env struct {
	stdout, stderr io.Writer
	stdin          io.Reader
	getenv         func(string) string
}

// Main runs the CLI with args (without argv[0]) and returns the exit code.
func Main(args []string) int {
	return run(args, env{stdout: os.Stdout, stderr: os.Stderr, stdin: os.Stdin, getenv: os.Getenv})
}

func run(args []string, e env) int {
	root := newRootCmd(e)
	root.SetArgs(args)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	fmt.Fprintln(e.stderr, "error:", err)
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		return ExitUsage
	}
	return ExitError
}

func newRootCmd(e env) *cobra.Command {
	root := &cobra.Command{
		Use:           "patronus",
		Short:         "Patronus: multi-cluster SD-WAN networking for Kubernetes",
		Long:          "Patronus runs on every node as the agent and is the CNI plugin (installed as patronus-cni).\n" + versionLine(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		newVersionCmd(e),
		newInstallCNICmd(e),
		newStatusCmd(e),
		newPolicyCmd(e),
		newAgentCmd(e),
		newPodsCmd(e),
		newMeshCmd(e),
		newMembersCmd(e),
		newKeysCmd(e),
		newEventCmd(e),
		newPathsCmd(e),
		newWanemCmd(e),
	)
	return root
}

// isCobraUsage recognises cobra's own argument errors (unknown command, wrong arg count).
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires ", "unknown flag", "unknown shorthand flag", "invalid argument"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}
