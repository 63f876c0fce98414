// Package probe is what the probe job runs: HTTP probes of a service's new
// tasks from inside the service's network (updater.probe.* labels).
package probe

import (
	"context"
	"fmt"
	"io"
)

// Main is `updater probe ...`, the probe job's command. It returns the
// process's exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "updater probe: not built yet")
	return 2
}
