// Command slack is the demo's Slack: the fake Slack Web API the e2e suite
// uses (internal/notify/fakeapi, which checks the token and the fields as
// Slack does), served at one fixed address, and the channel it holds
// rendered as plain text at GET / (every message, edits applied, oldest
// first) and GET /last (the newest), so `make demo` can show in a
// terminal what a team would see in Slack.
//
//	LISTEN=127.0.0.1:5001 SLACK_TOKEN=xoxb-… slack
//
// The updater's SLACK_API_URL is then http://LISTEN/api/, its
// SLACK_CHANNEL #deploys (the one channel the fake knows).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/updater-dev/updater/internal/notify/fakeapi"
)

func main() { os.Exit(run()) }

func run() int {
	addr := os.Getenv("LISTEN")
	if addr == "" {
		addr = "127.0.0.1:5001"
	}
	token := os.Getenv("SLACK_TOKEN")
	if !strings.HasPrefix(token, "xoxb-") {
		log.Print("slack: SLACK_TOKEN must be the bot token the updater is given (xoxb-…)")
		return 2
	}
	h, err := handler(token)
	if err != nil {
		log.Printf("slack: %v", err)
		return 1
	}
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("slack: the Web API at http://%s/api/ (channel #deploys), the channel as text at http://%s/", addr, addr)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Printf("slack: %v", err)
		return 1
	}
	return 0
}

// handler passes /api/ to a fake Slack accepting token, which listens on
// a port of its own choosing, and renders its channel at / and /last.
func handler(token string) (http.Handler, error) {
	fake, err := fakeapi.NewSlack(token)
	if err != nil {
		return nil, fmt.Errorf("start the fake Slack: %w", err)
	}
	base, err := url.Parse(strings.TrimSuffix(fake.APIURL, "api/"))
	if err != nil {
		return nil, fmt.Errorf("parse the fake Slack's address: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/api/", httputil.NewSingleHostReverseProxy(base))
	show := func(last bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			msgs := channel(fake.Accepted())
			if last && len(msgs) > 0 {
				msgs = msgs[len(msgs)-1:]
			}
			var b strings.Builder
			for i, m := range msgs {
				if i > 0 {
					b.WriteString("\n")
				}
				b.WriteString(m.render())
			}
			fmt.Fprint(w, b.String())
		}
	}
	mux.HandleFunc("GET /{$}", show(false))
	mux.HandleFunc("GET /last", show(true))
	return mux, nil
}

// message is one message of the channel as Slack shows it now: its
// latest content, how often it was edited, its thread's replies.
type message struct {
	ts      string
	text    string
	blocks  json.RawMessage
	edits   int
	replies []string
}

// channel replays the calls Slack accepted: a post adds a message (or a
// reply to its thread), an update replaces a message's content.
func channel(calls []fakeapi.SlackCall) []*message {
	var msgs []*message
	byTS := map[string]*message{}
	for _, c := range calls {
		switch {
		case c.Method == "chat.postMessage" && c.ThreadTS != "":
			if m := byTS[c.ThreadTS]; m != nil {
				m.replies = append(m.replies, c.Text)
			}
		case c.Method == "chat.postMessage" || c.Method == "webhook":
			m := &message{ts: c.TS, text: c.Text, blocks: c.Blocks}
			msgs = append(msgs, m)
			if c.TS != "" {
				byTS[c.TS] = m
			}
		case c.Method == "chat.update":
			if m := byTS[c.TS]; m != nil {
				m.text, m.blocks = c.Text, c.Blocks
				m.edits++
			}
		}
	}
	return msgs
}

// block is the part of a Block Kit block that has words in it.
type block struct {
	Type     string       `json:"type"`
	Text     *textObject  `json:"text"`
	Fields   []textObject `json:"fields"`
	Elements []struct {
		Type string          `json:"type"`
		Text json.RawMessage `json:"text"` // a string in a context block, an object on a button
	} `json:"elements"`
}

type textObject struct {
	Text string `json:"text"`
}

// render is the message as plain text: its blocks (or, without blocks,
// its text), its edits and its thread.
func (m *message) render() string {
	var lines []string
	var blocks []block
	if len(m.blocks) == 0 || json.Unmarshal(m.blocks, &blocks) != nil {
		blocks = []block{{Type: "section", Text: &textObject{Text: m.text}}}
	}
	for _, b := range blocks {
		switch b.Type {
		case "section", "header":
			if b.Text != nil {
				lines = append(lines, strings.Split(plain(b.Text.Text), "\n")...)
			}
			// Fields are "*Name*\nvalue": a line each, "Name: value".
			for _, f := range b.Fields {
				name, value, _ := strings.Cut(plain(f.Text), "\n")
				lines = append(lines, name+": "+strings.ReplaceAll(value, "\n", " "))
			}
		case "context", "actions":
			var words []string
			for _, e := range b.Elements {
				var s string
				var o textObject
				switch {
				case json.Unmarshal(e.Text, &s) == nil:
				case json.Unmarshal(e.Text, &o) == nil:
					s = o.Text
				}
				if b.Type == "actions" {
					s = "[ " + s + " ]"
				}
				words = append(words, plain(s))
			}
			lines = append(lines, strings.Join(words, "  "))
		case "divider":
			lines = append(lines, "───")
		}
	}
	head := "#deploys · updater"
	if m.edits > 0 {
		head += fmt.Sprintf(" · edited %d×", m.edits)
	}
	out := []string{head}
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			out = append(out, wrap(l, "  ", 100)...)
		}
	}
	if n := len(m.replies); n > 0 {
		first, _, _ := strings.Cut(plain(m.replies[0]), "\n")
		out = append(out, fmt.Sprintf("  ↳ %d %s in the thread: %s", n, plural(n, "reply", "replies"), first))
	}
	return strings.Join(out, "\n") + "\n"
}

// wrap breaks a long line (a failure's reason) at spaces into lines of
// at most width bytes after indent, as a chat client would.
func wrap(line, indent string, width int) []string {
	var out []string
	cur := ""
	for _, w := range strings.Fields(line) {
		if cur != "" && len(cur)+1+len(w) > width {
			out = append(out, indent+cur)
			cur = ""
		}
		if cur != "" {
			cur += " "
		}
		cur += w
	}
	return append(out, indent+cur)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

var (
	// <!date^1700000000^{time_secs}|12:00:00 UTC>, <https://…|label>,
	// <@U0123>: what a client shows is the part after "|", or the inside.
	angled = regexp.MustCompile(`<([^<>|]*)(?:\|([^<>]*))?>`)
	bold   = regexp.MustCompile(`\*([^*\n]+)\*`)
	emoji  = strings.NewReplacer(":white_check_mark:", "✅", ":x:", "❌", ":leftwards_arrow_with_hook:", "↩️",
		":rotating_light:", "🚨", ":arrows_counterclockwise:", "🔄", ":hourglass_flowing_sand:", "⏳",
		":warning:", "⚠️", ":no_entry:", "⛔")
	// Slack escapes these three in mrkdwn; the client shows them plain.
	unescape = strings.NewReplacer("&lt;", "<", "&gt;", ">", "&amp;", "&")
)

// plain turns Slack mrkdwn into what a reader sees, without the styling.
func plain(s string) string {
	s = angled.ReplaceAllStringFunc(s, func(m string) string {
		p := angled.FindStringSubmatch(m)
		if p[2] != "" {
			return p[2]
		}
		return strings.TrimPrefix(p[1], "!")
	})
	s = strings.ReplaceAll(s, "```", "\n")
	s = strings.ReplaceAll(s, "`", "")
	s = bold.ReplaceAllString(s, "$1")
	return unescape.Replace(emoji.Replace(s))
}
