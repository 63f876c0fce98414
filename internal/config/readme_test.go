package config

import (
	"bufio"
	"fmt"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The README's configuration tables are the operator's reference, so they
// and the settings Load reads cannot drift apart: every variable Load reads
// (in the updater's own namespaces) has a row, every such variable a row
// names is read, and a secret's row names its _FILE twin. Variables that
// libraries read (DOCKER_*, SSL_*, AWS_*, GOOGLE_*) may be documented too;
// Load does not read them, so they are not checked here.
func TestREADMEConfigurationTables(t *testing.T) {
	rows := readmeConfigRows(t, "../../README.md")

	documented := map[string]string{} // variable → its row
	for _, row := range rows {
		for _, name := range row.names {
			if !inNamespace(name) {
				continue
			}
			if prev, ok := documented[name]; ok {
				t.Errorf("README: %s has two rows:\n%s\n%s", name, prev, row.line)
			}
			documented[name] = row.line
		}
	}

	read := map[string]bool{}
	for _, s := range settings() {
		read[s.name] = true
		row, ok := documented[s.name]
		if !ok {
			t.Errorf("config reads %s, but the README's configuration tables have no row for it", s.name)
			continue
		}
		twin := "`" + s.name + "_FILE`"
		switch {
		case secret(s.name) && !strings.Contains(row, twin):
			t.Errorf("README: %s is a secret, and its row does not name its file twin %s", s.name, twin)
		case !secret(s.name) && strings.Contains(row, twin):
			t.Errorf("README: %s's row names %s, which config does not read (%s is not a secret)", s.name, twin, s.name)
		}
	}
	for name := range documented {
		if !read[name] {
			t.Errorf("the README documents %s, which config does not read", name)
		}
	}
}

// A variable set to the default its row documents configures what
// leaving it unset does: the default column is checked against defaults()
// and the parsers. Rows whose default is prose, or another variable, are
// not literal defaults and are left out.
func TestREADMEConfigurationDefaults(t *testing.T) {
	literal := regexp.MustCompile("^`([^`]+)`$")
	checked := 0
	for _, row := range readmeConfigRows(t, "../../README.md") {
		m := literal.FindStringSubmatch(row.def)
		if m == nil || len(row.names) != 1 || !inNamespace(row.names[0]) || varName.MatchString(row.def) {
			continue
		}
		name, def := row.names[0], m[1]
		if err := sameAsUnset(name, def); err != nil {
			t.Errorf("README: %s's documented default %q: %v", name, def, err)
		}
		checked++
	}
	t.Logf("%d documented defaults checked", checked)
	if checked < 10 {
		t.Fatalf("checked %d documented defaults: the default column's format changed", checked)
	}
}

// sameAsUnset loads the configuration with name=value and without it, next
// to the first set of companions that makes it valid (a Slack setting
// needs a token, a prune setting pruning on, …), and compares the two.
func sameAsUnset(name, value string) error {
	companions := []map[string]string{
		{},
		{"SLACK_TOKEN": "xoxb-readme-test", "SLACK_CHANNEL": "#deploys"},
		{"ROLLBAR_TOKEN": "readme-test"},
		{"UPDATER_PRUNE": "after-deploy"},
		{"UPDATER_API_TOKEN": "readme-test-token-0123456789"},
	}
	var firstErr error
	for _, base := range companions {
		unset, err := loadMap(base)
		if err != nil {
			continue
		}
		with := maps.Clone(base)
		with[name] = value
		set, err := loadMap(with)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if diff := fieldDiff(set, unset); diff != "" {
			return fmt.Errorf("setting it is not the same as leaving it unset: %s", diff)
		}
		return nil
	}
	return fmt.Errorf("refused: %v", firstErr)
}

// fieldDiff names the Config fields that differ, with both values.
func fieldDiff(set, unset Config) string {
	var diffs []string
	a, b := reflect.ValueOf(set), reflect.ValueOf(unset)
	for i := range a.NumField() {
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			diffs = append(diffs, fmt.Sprintf("%s %v (unset: %v)", a.Type().Field(i).Name, a.Field(i), b.Field(i)))
		}
	}
	return strings.Join(diffs, "; ")
}

func loadMap(env map[string]string) (Config, error) {
	var environ []string
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	return Load(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, environ)
}

// readmeRow is one row of a table in the README's Configuration section.
type readmeRow struct {
	line  string
	names []string // the variables its first cell names
	def   string   // its second cell, the default, trimmed
}

var (
	tableRow = regexp.MustCompile("^\\|\\s*`")
	varName  = regexp.MustCompile("`([A-Z][A-Z0-9_]*)`")
)

// readmeConfigRows reads the table rows under "## Configuration", up to the
// next section at that level; the tables may be split by ### headings.
func readmeConfigRows(t *testing.T, path string) []readmeRow {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rows []readmeRow
	in := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			in = strings.TrimSpace(line) == "## Configuration"
			continue
		}
		if !in || !tableRow.MatchString(line) {
			continue
		}
		cells := strings.Split(line, "|")
		r := readmeRow{line: line}
		if len(cells) > 2 {
			r.def = strings.TrimSpace(cells[2])
		}
		for _, m := range varName.FindAllStringSubmatch(cells[1], -1) {
			r.names = append(r.names, m[1])
		}
		rows = append(rows, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	// The section gone or its format changed would otherwise pass as
	// "nothing documented" and fail only on every setting at once.
	if len(rows) < 20 {
		t.Fatalf("found %d rows under the README's \"## Configuration\": the section or its table format changed", len(rows))
	}
	return rows
}

func inNamespace(name string) bool {
	return slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(name, p) })
}
