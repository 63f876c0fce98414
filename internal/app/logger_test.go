package app

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/config"
)

// Durations read the same in JSON lines as in text: "1.5s", not
// 1500000000, in groups too.
func TestLoggerDurations(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		var buf bytes.Buffer
		log := newLogger(config.Config{LogFormat: format}, &buf)
		log.Info("deploy succeeded", "duration", 1500*time.Millisecond, "service", "web")
		log.WithGroup("run").Info("stopped", "wait", 2*time.Minute)
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if len(lines) != 2 {
			t.Fatalf("%s: %d lines:\n%s", format, len(lines), buf.String())
		}
		if format == "text" {
			if !strings.Contains(lines[0], "duration=1.5s") || !strings.Contains(lines[1], "run.wait=2m0s") {
				t.Errorf("text:\n%s", buf.String())
			}
			continue
		}
		var first struct{ Duration any }
		var second struct{ Run struct{ Wait any } }
		if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(lines[1]), &second); err != nil {
			t.Fatal(err)
		}
		if first.Duration != "1.5s" || second.Run.Wait != "2m0s" {
			t.Errorf("json durations %#v and %#v, want \"1.5s\" and \"2m0s\":\n%s", first.Duration, second.Run.Wait, buf.String())
		}
	}
}
