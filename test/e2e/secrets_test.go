//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"strings"
	"sync"
)

// Every secret the suite hands the updater (tokens, the webhook key,
// registry passwords), and every output of the updater the suite sees:
// its logs, the output of its commands, the HTTP API's answers, its
// messages to Slack. At the end of the run none may contain a secret.
var captured struct {
	mu      sync.Mutex
	outputs map[string]*strings.Builder // by where it came from
	bytes   int
}

// testSecrets are the values that must never come out again.
func testSecrets() map[string]string {
	return map[string]string{
		"Slack token":                    slackToken,
		"Rollbar token":                  rollbarToken,
		"API token":                      apiToken,
		"webhook secret":                 webhookSecret,
		"registry password":              registryPassword,
		"registry password (multi-node)": mnPass,
		"registry auth (base64 user:pw)": registryAuth(),
	}
}

// capture keeps b as output of the updater seen at where.
func capture(where string, b []byte) {
	captured.mu.Lock()
	defer captured.mu.Unlock()
	if captured.outputs == nil {
		captured.outputs = map[string]*strings.Builder{}
	}
	sb := captured.outputs[where]
	if sb == nil {
		sb = &strings.Builder{}
		captured.outputs[where] = sb
	}
	sb.Write(b)
	sb.WriteByte('\n')
	captured.bytes += len(b) + 1
}

// scanSecrets reports every secret found in a captured output, and
// returns false if there was one.
func scanSecrets(w io.Writer) bool {
	captured.mu.Lock()
	defer captured.mu.Unlock()
	clean := true
	for name, secret := range testSecrets() {
		for where, out := range captured.outputs {
			if i := strings.Index(out.String(), secret); i >= 0 {
				clean = false
				lo, hi := max(0, i-120), min(out.Len(), i+len(secret)+40)
				fmt.Fprintf(w, "e2e: SECRET LEAKED: the %s appears in %s: …%s…\n", name, where, out.String()[lo:hi])
			}
		}
	}
	fmt.Fprintf(w, "\nsecrets scan: %d secrets × %d outputs (%d KiB: updater logs, command output, API answers, Slack messages): %s\n",
		len(testSecrets()), len(captured.outputs), captured.bytes/1024, map[bool]string{true: "none found", false: "LEAKED"}[clean])
	return clean
}
