package app

import (
	"io"
	"log/slog"

	"github.com/updater-dev/updater/internal/config"
)

// newLogger writes JSON lines, or text with UPDATER_LOG_FORMAT=text.
func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel, ReplaceAttr: durationString}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// durationString writes a duration as Go spells it ("1.5s"), as the text
// handler does: slog's JSON handler writes nanoseconds, a number nobody
// reading a line (or a log query) takes for a duration.
func durationString(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}
