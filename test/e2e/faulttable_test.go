//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
)

// The fault suite's promise is a table: for each injected fault, what the
// updater did. Tests that inject one call fault(t, scenario) and fill in
// the outcome as they prove it; TestMain prints the table at the end, with
// a test's verdict next to its row, so a failure shows in the table too.
var faultTable struct {
	mu   sync.Mutex
	rows []*faultRow
}

type faultRow struct {
	scenario, test string
	outcome        *outcome
	failed         bool
}

// outcome is the row a test fills in; set it to what was proven.
type outcome struct{ text string }

func (o *outcome) set(format string, args ...any) { o.text = fmt.Sprintf(format, args...) }

// fault registers scenario for t; its verdict is t's, taken when t ends.
func fault(t *testing.T, scenario string) *outcome {
	r := &faultRow{scenario: scenario, test: t.Name(), outcome: &outcome{text: "(did not get as far as an outcome)"}}
	faultTable.mu.Lock()
	faultTable.rows = append(faultTable.rows, r)
	faultTable.mu.Unlock()
	t.Cleanup(func() {
		faultTable.mu.Lock()
		r.failed = t.Failed()
		faultTable.mu.Unlock()
	})
	return r.outcome
}

func printFaultTable(w io.Writer) {
	faultTable.mu.Lock()
	defer faultTable.mu.Unlock()
	if len(faultTable.rows) == 0 {
		return
	}
	fmt.Fprintln(w, "\nfault suite: scenario → outcome")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VERDICT\tSCENARIO\tOUTCOME (proven)\tTEST")
	for _, r := range faultTable.rows {
		v := "ok"
		if r.failed {
			v = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v, r.scenario, strings.ReplaceAll(r.outcome.text, "\t", " "), r.test)
	}
	tw.Flush()
}
