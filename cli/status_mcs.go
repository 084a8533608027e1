package cli

import (
	"fmt"

	"github.com/patronus/patronus/localapi"
)

// mcsLine is the Multi-Cluster Services line of `patronus status`: shown once the agent
// runs MCS (controller state set) or watches the MCS API. Informational: a cluster
// without the CRDs or a non-gateway node is normal.
func mcsLine(m localapi.MCS) []statusLine {
	if !m.Available && m.Controller == "" {
		return nil
	}
	lead := ""
	if m.Leader {
		lead = ", this agent leads"
	}
	text := fmt.Sprintf("MCS: %d ServiceExports, %d ServiceImports%s", m.ServiceExports, m.ServiceImports, lead)
	if m.Controller != "" {
		text += "; " + m.Controller
	}
	return []statusLine{{true, text}}
}
