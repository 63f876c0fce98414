package config

import (
	"bufio"
	"os"
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

// readmeRow is one row of a table in the README's Configuration section.
type readmeRow struct {
	line  string
	names []string // the variables its first cell names
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
