package fakeapi

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The fakes are only worth what their checks are: these requests are the
// mistakes a client can make, and each must be refused the way the real
// API refuses it.

const slackToken = "xoxb-fake-token"

type req struct {
	method, path, contentType, auth, body string
}

func do(t *testing.T, base string, r req) (int, string, http.Header) {
	t.Helper()
	hr, err := http.NewRequest(r.method, base+r.path, strings.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	if r.contentType != "" {
		hr.Header.Set("Content-Type", r.contentType)
	}
	if r.auth != "" {
		hr.Header.Set("Authorization", r.auth)
	}
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func form(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return v.Encode()
}

const formCT = "application/x-www-form-urlencoded"

func slackError(t *testing.T, body string) string {
	t.Helper()
	var r struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("answer %q is not JSON", body)
	}
	if r.OK {
		return ""
	}
	return r.Error
}

func TestSlackWebAPIChecks(t *testing.T) {
	s, err := NewSlack(slackToken)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	base := strings.TrimSuffix(s.APIURL, "/api/")
	post := func(method string, kv ...string) req {
		return req{"POST", "/api/" + method, formCT, "", form(append([]string{"token", slackToken}, kv...)...)}
	}
	for _, tt := range []struct {
		name   string
		r      req
		status int
		err    string
	}{
		{"no token", req{"POST", "/api/chat.postMessage", formCT, "", form("channel", "C0DEPLOYS", "text", "hi")}, 200, "not_authed"},
		{"wrong token", post("chat.postMessage", "channel", "C0DEPLOYS", "text", "hi", "token", "xoxb-other"), 200, "invalid_auth"},
		{"wrong bearer", req{"POST", "/api/auth.test", formCT, "Bearer xoxb-other", ""}, 200, "invalid_auth"},
		{"token in a JSON body", req{"POST", "/api/chat.postMessage", "application/json", "", `{"token":"` + slackToken + `","channel":"C0DEPLOYS","text":"hi"}`}, 200, "not_authed"},
		{"GET", req{"GET", "/api/chat.postMessage", "", "Bearer " + slackToken, ""}, 405, "method_not_allowed"},
		{"unknown method", post("chat.nope"), 404, "unknown_method"},
		{"no channel", post("chat.postMessage", "text", "hi"), 200, "channel_not_found"},
		{"unknown channel", post("chat.postMessage", "channel", "#random", "text", "hi"), 200, "channel_not_found"},
		{"no text", post("chat.postMessage", "channel", "C0DEPLOYS"), 200, "no_text"},
		{"blocks not an array", post("chat.postMessage", "channel", "C0DEPLOYS", "blocks", `{"type":"section"}`), 200, "invalid_blocks"},
		{"reply to nothing", post("chat.postMessage", "channel", "C0DEPLOYS", "text", "hi", "thread_ts", "1.2"), 200, "thread_not_found"},
		{"update no ts", post("chat.update", "channel", "C0DEPLOYS", "text", "hi"), 200, "message_not_found"},
		{"update unknown ts", post("chat.update", "channel", "C0DEPLOYS", "ts", "1.2", "text", "hi"), 200, "message_not_found"},
		{"update by channel name", post("chat.update", "channel", "#deploys", "ts", "1.2", "text", "hi"), 200, "channel_not_found"},
		{"auth.test", post("auth.test"), 200, ""},
		{"post by name", post("chat.postMessage", "channel", "#deploys", "text", "hi"), 200, ""},
		{"post JSON with bearer", req{"POST", "/api/chat.postMessage", "application/json; charset=utf-8", "Bearer " + slackToken,
			`{"channel":"C0DEPLOYS","blocks":[{"type":"section","text":{"type":"mrkdwn","text":"hi"}}]}`}, 200, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, body, _ := do(t, base, tt.r)
			if status != tt.status || slackError(t, body) != tt.err {
				t.Fatalf("got %d %s, want %d error %q", status, body, tt.status, tt.err)
			}
		})
	}

	// A posted message can be edited by its ID and answered in its thread.
	_, body, _ := do(t, base, post("chat.postMessage", "channel", "#deploys", "text", "first"))
	var posted struct{ Channel, TS string }
	_ = json.Unmarshal([]byte(body), &posted)
	if posted.Channel != "C0DEPLOYS" || posted.TS == "" {
		t.Fatalf("post answered %s", body)
	}
	for _, r := range []req{
		post("chat.update", "channel", posted.Channel, "ts", posted.TS, "text", "edited"),
		post("chat.postMessage", "channel", posted.Channel, "thread_ts", posted.TS, "text", "reply"),
	} {
		if status, body, _ := do(t, base, r); status != 200 || slackError(t, body) != "" {
			t.Fatalf("%s: %d %s", r.path, status, body)
		}
	}
	acc := s.Accepted()
	if len(acc) != 5 || acc[3].Method != "chat.update" || acc[3].TS != posted.TS || acc[4].ThreadTS != posted.TS {
		t.Fatalf("accepted calls %+v", acc)
	}
}

func TestSlackRateLimit(t *testing.T) {
	s, err := NewSlack(slackToken)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	base := strings.TrimSuffix(s.APIURL, "/api/")
	s.RateLimit("chat.postMessage", 1, 2*time.Second)
	r := req{"POST", "/api/chat.postMessage", formCT, "", form("token", slackToken, "channel", "C0DEPLOYS", "text", "hi")}
	status, body, h := do(t, base, r)
	if status != 429 || h.Get("Retry-After") != "2" || slackError(t, body) != "ratelimited" {
		t.Fatalf("got %d %q Retry-After=%q", status, body, h.Get("Retry-After"))
	}
	if status, _, _ := do(t, base, r); status != 200 {
		t.Fatalf("second call: %d, want the fault used up", status)
	}
}

func TestSlackWebhookChecks(t *testing.T) {
	s, err := NewSlack(slackToken)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u, _ := url.Parse(s.WebhookURL)
	base := u.Scheme + "://" + u.Host
	for _, tt := range []struct {
		name   string
		r      req
		status int
		body   string
	}{
		{"ok", req{"POST", u.Path, "application/json", "", `{"text":"hi"}`}, 200, "ok"},
		{"blocks only", req{"POST", u.Path, "application/json", "", `{"blocks":[{"type":"divider"}]}`}, 200, "ok"},
		{"wrong path", req{"POST", u.Path + "x", "application/json", "", `{"text":"hi"}`}, 404, "no_service"},
		{"not JSON", req{"POST", u.Path, "application/json", "", `text=hi`}, 400, "invalid_payload"},
		{"no text", req{"POST", u.Path, "application/json", "", `{"username":"x"}`}, 400, "no_text"},
		{"GET", req{"GET", u.Path, "", "", ""}, 405, "invalid_method"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, body, _ := do(t, base, tt.r)
			if status != tt.status || strings.TrimSpace(body) != tt.body {
				t.Fatalf("got %d %q, want %d %q", status, body, tt.status, tt.body)
			}
		})
	}
	if n := len(s.Accepted()); n != 2 {
		t.Fatalf("%d accepted, want 2", n)
	}
}

func TestRollbarChecks(t *testing.T) {
	const tok = "rollbar-token"
	f, err := NewRollbar(tok)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	base := strings.TrimSuffix(f.APIURL, "/api/1/")
	js := "application/json"
	for _, tt := range []struct {
		name   string
		r      req
		header string // X-Rollbar-Access-Token
		status int
		msg    string
	}{
		{"no token", req{"POST", "/api/1/deploy", js, "", `{"environment":"p","revision":"r"}`}, "", 401, "access token required"},
		{"wrong token", req{"POST", "/api/1/deploy", js, "", `{"environment":"p","revision":"r"}`}, "nope", 401, "invalid access token"},
		{"no environment", req{"POST", "/api/1/deploy", js, "", `{"revision":"r"}`}, tok, 422, "'environment' is required"},
		{"no revision", req{"POST", "/api/1/deploy", js, "", `{"environment":"p"}`}, tok, 422, "'revision' is required"},
		{"bad status", req{"POST", "/api/1/deploy", js, "", `{"environment":"p","revision":"r","status":"done"}`}, tok, 422, "invalid status: done"},
		{"GET deploy list", req{"GET", "/api/1/deploy", "", "", ""}, tok, 405, "method not allowed"},
		{"unknown deploy", req{"PATCH", "/api/1/deploy/42", js, "", `{"status":"failed"}`}, tok, 404, "Deploy not found"},
		{"item without data", req{"POST", "/api/1/item/", js, "", `{}`}, tok, 422, "'data' is required"},
		{"item without environment", req{"POST", "/api/1/item/", js, "", `{"data":{"body":{}}}`}, tok, 422, "'data.environment' is required"},
		{"item token in body", req{"POST", "/api/1/item/", js, "", `{"access_token":"` + tok + `","data":{"environment":"p","body":{"message":{"body":"x"}}}}`}, "", 200, ""},
		{"deploy as a form, token in it", req{"POST", "/api/1/deploy/", formCT, "", form("access_token", tok, "environment", "p", "revision", "r")}, "", 200, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hr, _ := http.NewRequest(tt.r.method, base+tt.r.path, strings.NewReader(tt.r.body))
			hr.Header.Set("Content-Type", tt.r.contentType)
			if tt.header != "" {
				hr.Header.Set("X-Rollbar-Access-Token", tt.header)
			}
			resp, err := http.DefaultClient.Do(hr)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var ans struct {
				Err     int    `json:"err"`
				Message string `json:"message"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&ans)
			if resp.StatusCode != tt.status || ans.Message != tt.msg {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, ans.Message, tt.status, tt.msg)
			}
		})
	}
	// The deploy made by form, patched with the token in the query string
	// as Rollbar's own tools do.
	d := f.Deploys()
	if len(d) != 1 {
		t.Fatalf("deploys %+v", d)
	}
	status, _, _ := do(t, base, req{"PATCH", "/api/1/deploy/" + strconv.Itoa(d[0].ID) + "?access_token=" + tok, "application/json", "", `{"status":"succeeded"}`})
	if status != 200 || strings.Join(f.Deploys()[0].Statuses, ",") != "succeeded,succeeded" {
		t.Fatalf("patch: %d %+v", status, f.Deploys())
	}
	if n := len(f.Items()); n != 1 {
		t.Fatalf("%d items", n)
	}
}
