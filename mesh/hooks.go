package mesh

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/serf/serf"
)

// EventHandler runs a script for the serf events its filters match, like serf agent's
// -event-handler: "[filter[,filter...]=]script". A filter is member-join, member-leave,
// member-failed, member-update, member-reap, user (every user event), user:NAME or *.
type EventHandler struct {
	Filters []string // empty means every event
	Script  string
}

var handlerFilters = map[string]bool{"member-join": true, "member-leave": true, "member-failed": true,
	"member-update": true, "member-reap": true, "user": true, "*": true}

// ParseEventHandler parses "[filters=]script".
func ParseEventHandler(spec string) (EventHandler, error) {
	h := EventHandler{Script: spec}
	// A filter list is lower-case words; a script may contain '=' itself ("FOO=1 ./x"),
	// so only a leading run that looks like a filter list is split off.
	if i := strings.Index(spec, "="); i > 0 && filterList().MatchString(spec[:i]) {
		h.Script = spec[i+1:]
		for _, f := range strings.Split(spec[:i], ",") {
			if !handlerFilters[f] && !strings.HasPrefix(f, "user:") {
				return EventHandler{}, fmt.Errorf("mesh: event handler filter %q: want member-join, member-leave, member-failed, member-update, member-reap, user, user:NAME or *", f)
			}
			h.Filters = append(h.Filters, f)
		}
	}
	if strings.TrimSpace(h.Script) == "" {
		return EventHandler{}, fmt.Errorf("mesh: event handler %q has no script", spec)
	}
	return h, nil
}

// Matches reports whether the handler runs for e.
func (h EventHandler) Matches(e serf.Event) bool {
	if len(h.Filters) == 0 {
		return true
	}
	name := e.EventType().String()
	for _, f := range h.Filters {
		switch {
		case f == "*" || f == name:
			return true
		case strings.HasPrefix(f, "user:"):
			if ue, ok := e.(serf.UserEvent); ok && ue.Name == strings.TrimPrefix(f, "user:") {
				return true
			}
		}
	}
	return false
}

// Compiled on first use, not at package init (every CNI plugin call runs the binary's inits).
var (
	filterList = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9:,*_.-]+$`) })
	envName    = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`[^A-Z0-9_]`) })
)

// handlerEnv is the environment a handler script sees (SERF_* as serf's agent sets it).
func handlerEnv(self serf.Member, e serf.Event) []string {
	env := append(os.Environ(),
		"SERF_EVENT="+e.EventType().String(),
		"SERF_SELF_NAME="+self.Name,
		"SERF_SELF_ROLE="+self.Tags[TagRole],
	)
	for k, v := range self.Tags {
		env = append(env, "SERF_TAG_"+envName().ReplaceAllString(strings.ToUpper(k), "_")+"="+v)
	}
	if ue, ok := e.(serf.UserEvent); ok {
		env = append(env, "SERF_USER_EVENT="+ue.Name, fmt.Sprintf("SERF_USER_LTIME=%d", ue.LTime))
	}
	return env
}

// handlerStdin is the script's input: for member events one line per member,
// "name<TAB>address<TAB>role<TAB>k=v,k=v" with tabs and newlines in values escaped; for
// user events the payload, newline-terminated.
func handlerStdin(e serf.Event) []byte {
	var b bytes.Buffer
	switch ev := e.(type) {
	case serf.MemberEvent:
		esc := strings.NewReplacer("\t", `\t`, "\n", `\n`)
		for _, m := range ev.Members {
			tags := make([]string, 0, len(m.Tags))
			for _, k := range sortedKeys(m.Tags) {
				tags = append(tags, k+"="+m.Tags[k])
			}
			fmt.Fprintf(&b, "%s\t%s\t%s\t%s\n", esc.Replace(m.Name), m.Addr, esc.Replace(m.Tags[TagRole]), esc.Replace(strings.Join(tags, ",")))
		}
	case serf.UserEvent:
		b.Write(ev.Payload)
		if len(ev.Payload) > 0 && ev.Payload[len(ev.Payload)-1] != '\n' {
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// maxHandlerOutput bounds what is kept of a script's output for the log.
const maxHandlerOutput = 8 << 10

// runHandler runs one script with /bin/sh -c, bounded by timeout.
func runHandler(ctx context.Context, h EventHandler, self serf.Member, e serf.Event, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", h.Script)
	cmd.Env = handlerEnv(self, e)
	cmd.Stdin = bytes.NewReader(handlerStdin(e))
	out, err := cmd.CombinedOutput()
	if len(out) > maxHandlerOutput {
		out = out[len(out)-maxHandlerOutput:]
	}
	if err != nil {
		return string(out), fmt.Errorf("mesh: event handler %q: %w", h.Script, err)
	}
	return string(out), nil
}
