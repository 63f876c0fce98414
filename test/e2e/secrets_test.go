//go:build e2e

package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/updater-dev/updater/internal/notify/fakeapi"
)

// Every secret the suite hands the updater (tokens, the webhook key,
// registry passwords, Slack webhook URLs), and every output of the updater
// the suite sees: its logs, the output of its commands, the HTTP API's
// answers, everything it sent to Slack and Rollbar (deploys and error
// items, refused calls included). At the end of the run none may contain
// a secret.
var captured struct {
	mu      sync.Mutex
	outputs map[string]*strings.Builder // by where it came from
	bytes   int
	secrets map[string]string // made at run time (a fake Slack's webhook URL), by name
}

// testSecrets are the values that must never come out again.
func testSecrets() map[string]string {
	out := map[string]string{
		"Slack token":                    slackToken,
		"Rollbar token":                  rollbarToken,
		"API token":                      apiToken,
		"webhook secret":                 webhookSecret,
		"registry password":              registryPassword,
		"registry password (multi-node)": mnPass,
		"registry auth (base64 user:pw)": registryAuth(),
	}
	captured.mu.Lock()
	defer captured.mu.Unlock()
	for name, v := range captured.secrets {
		out[name] = v
	}
	return out
}

// addSecret lists a secret made at run time.
func addSecret(name, value string) {
	captured.mu.Lock()
	defer captured.mu.Unlock()
	if captured.secrets == nil {
		captured.secrets = map[string]string{}
	}
	captured.secrets[name] = value
}

// leaked names the secrets found in text.
func leaked(text string) []string {
	var out []string
	for name, secret := range testSecrets() {
		if strings.Contains(text, secret) {
			out = append(out, name)
		}
	}
	return out
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
	secrets := testSecrets()
	captured.mu.Lock()
	defer captured.mu.Unlock()
	clean := true
	for name, secret := range secrets {
		for where, out := range captured.outputs {
			if i := strings.Index(out.String(), secret); i >= 0 {
				clean = false
				lo, hi := max(0, i-120), min(out.Len(), i+len(secret)+40)
				fmt.Fprintf(w, "e2e: SECRET LEAKED: the %s appears in %s: …%s…\n", name, where, out.String()[lo:hi])
			}
		}
	}
	fmt.Fprintf(w, "\nsecrets scan: %d secrets × %d outputs (%d KiB: updater logs, command output, API answers, Slack and Rollbar calls): %s\n",
		len(secrets), len(captured.outputs), captured.bytes/1024, map[bool]string{true: "none found", false: "LEAKED"}[clean])
	return clean
}

// authFront is a registry that wants the suite's registry credentials
// (HTTP basic auth) in front of the suite's registry, and can refuse them
// as if they had been revoked. It counts the requests that carried them.
type authFront struct {
	addr string

	mu      sync.Mutex
	refuse  bool
	sent    int // requests with the right credentials
	refused int // of those, refused
}

func startAuthFront(t *testing.T) *authFront {
	t.Helper()
	f := &authFront{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pw, _ := r.BasicAuth()
		good := user == registryUser && pw == registryPassword
		f.mu.Lock()
		refuse := f.refuse
		if good {
			f.sent++
			if refuse {
				f.refused++
			}
		}
		f.mu.Unlock()
		if !good || refuse {
			w.Header().Set("WWW-Authenticate", `Basic realm="e2e-secrets"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		env.faultyH.ServeHTTP(w, r)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	f.addr = l.Addr().String()
	return f
}

func (f *authFront) set(refuse bool) { f.mu.Lock(); f.refuse = refuse; f.mu.Unlock() }

func (f *authFront) counts() (sent, refused int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent, f.refused
}

// The updater holds registry credentials and reports its errors to
// Rollbar, and the registry refuses the credentials it sends (401): the
// error reaches Rollbar, Slack and the log, and none of them, nor the
// API's answers, carries a secret. Then the registry takes them again and
// the pending version deploys with them (Docker pulls with the
// credentials the spec write carried).
func TestSecretsRegistryCredentialsWithRollbarErrors(t *testing.T) {
	const stack, repo, svcName = "e2esecret", "e2e/secret", "e2esecret_app"
	front := startAuthFront(t)
	sl, rb := fakeSlack(t), fakeRollbar(t)
	t.Cleanup(func() { removeImagesOf(front.addr) })

	v1 := push(t, repo, "v1")
	spec := serviceSpec(svcName, repo, v1, svcOpts{stack: stack, optIn: true})
	spec.TaskTemplate.ContainerSpec.Image = front.addr + "/" + repo + ":latest@" + v1
	auth, _ := json.Marshal(map[string]string{"username": registryUser, "password": registryPassword, "serveraddress": front.addr})
	res, err := env.docker.ServiceCreate(t.Context(), client.ServiceCreateOptions{Spec: spec,
		EncodedRegistryAuth: base64.URLEncoding.EncodeToString(auth)})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	app := res.ID
	t.Cleanup(func() { removeService(app) })
	waitFor(t, 60*time.Second, svcName+" running", func() bool { return allRunning(t, app, v1) })

	creds := t.TempDir()
	cfg, _ := json.Marshal(map[string]any{"auths": map[string]any{front.addr: map[string]string{"auth": registryAuth()}}})
	if err := os.WriteFile(filepath.Join(creds, "config.json"), cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	u := startUpdater(t, stack, append(append([]string{"DOCKER_CONFIG=" + creds, "SLACK_WEBHOOK_URL=" + sl.WebhookURL},
		rollbarEnv(rb)...), httpEnv()...)...)
	base := u.base(t)
	waitFor(t, 30*time.Second, "a first clean cycle", func() bool { return u.cycles() >= 1 })

	front.set(true)
	t.Cleanup(func() { front.set(false) })
	v2 := push(t, repo, "v2")
	waitFor(t, time.Minute, "the registry's 401 as a Rollbar error item", func() bool {
		for _, it := range rb.Items() {
			if strings.Contains(it.Title, "registry failing") && strings.Contains(fmt.Sprint(it.Data), "401") {
				return true
			}
		}
		return false
	})
	if sent, refused := front.counts(); refused == 0 {
		t.Fatalf("the registry refused %d requests with the credentials (of %d that carried them): the 401 was not about them", refused, sent)
	}
	call(t, "GET", base+"/api/v1/services", "Bearer "+apiToken, nil, "")

	front.set(false)
	u.waitLog(t, deployLimit, 1, "deploy succeeded", "to_digest", v2)
	waitFor(t, 30*time.Second, "v2 running", func() bool { return allRunning(t, app, v2) })
	waitFor(t, 30*time.Second, "the Rollbar deploy closed and 4 Slack messages", func() bool {
		d := rb.Deploys()
		return len(d) == 1 && len(d[0].Statuses) == 2 && len(sl.Accepted()) >= 4
	})
	call(t, "GET", base+"/api/v1/services", "Bearer "+apiToken, nil, "")
	call(t, "GET", base+"/api/v1/deploys", "Bearer "+apiToken, nil, "")

	outputs := map[string]string{"the updater log": u.log()}
	for i, c := range rb.Calls() {
		delete(c.Params, "access_token") // where the token belongs
		outputs[fmt.Sprintf("Rollbar call %d (%s)", i, c.Route)] = fmt.Sprint(c.Params)
	}
	for i, c := range sl.Calls() {
		outputs[fmt.Sprintf("Slack call %d (%s)", i, c.Method)] = c.Content()
	}
	captured.mu.Lock()
	outputs["the HTTP API's answers"] = captured.outputs["HTTP API answers"].String()
	captured.mu.Unlock()
	for where, out := range outputs {
		if names := leaked(out); len(names) > 0 {
			t.Errorf("%s shows the %s:\n%s", where, strings.Join(names, ", "), out)
		}
	}
	sent, refused := front.counts()
	t.Logf("%d requests carried the registry credentials, %d refused; %d Rollbar calls (%d error items), %d Slack calls, scanned for %d secrets",
		sent, refused, len(rb.Calls()), len(rb.Items()), len(sl.Calls()), len(testSecrets()))
}

// removeImagesOf removes the images dockerd pulled from the registry at
// addr, retrying while Swarm still removes the containers that use them.
func removeImagesOf(addr string) {
	ctx := context.Background()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		res, err := env.docker.ImageList(ctx, client.ImageListOptions{})
		if err != nil {
			return
		}
		left := 0
		for _, img := range res.Items {
			for _, ref := range append(img.RepoDigests, img.RepoTags...) {
				if strings.HasPrefix(ref, addr+"/") {
					left++
					env.docker.ImageRemove(ctx, img.ID, client.ImageRemoveOptions{Force: true, PruneChildren: true})
					break
				}
			}
		}
		if left == 0 {
			return
		}
	}
}

// updaterOutputs is everything of the updater's that leaves it, for a
// test to search: its log, every Slack and Rollbar call (the access token
// is where it belongs), the API's answers, and every record it keeps in
// Swarm (labels and data). A record about the service is required, so a
// scan never passes for want of looking.
func updaterOutputs(t *testing.T, u *updater, sl *fakeapi.Slack, rb *fakeapi.Rollbar, base, serviceID string) map[string]string {
	t.Helper()
	out := map[string]string{"the updater log": u.log()}
	for i, c := range sl.Calls() {
		out[fmt.Sprintf("Slack call %d (%s)", i, c.Method)] = c.Content()
	}
	for i, c := range rb.Calls() {
		delete(c.Params, "access_token")
		out[fmt.Sprintf("Rollbar call %d (%s)", i, c.Route)] = fmt.Sprint(c.Params)
	}
	for _, path := range []string{"/api/v1/services", "/api/v1/deploys", "/readyz"} {
		r := call(t, "GET", base+path, "Bearer "+apiToken, nil, "")
		out["the API's answer to GET "+path] = r.body
	}
	ctx := t.Context()
	res, err := env.docker.ConfigList(ctx, client.ConfigListOptions{Filters: make(client.Filters).Add("label", "io.updater.kind")})
	if err != nil {
		t.Fatal(err)
	}
	about := 0
	for _, c := range res.Items {
		ins, err := env.docker.ConfigInspect(ctx, c.ID, client.ConfigInspectOptions{})
		if err != nil {
			continue // removed meanwhile
		}
		if ins.Config.Spec.Labels["io.updater.service"] == serviceID {
			about++
		}
		out["the Swarm record "+c.Spec.Name] = fmt.Sprint(ins.Config.Spec.Labels) + "\n" + string(ins.Config.Spec.Data)
	}
	if about == 0 {
		t.Fatalf("no Swarm record about service %s among %d of the updater's: nothing to scan", serviceID, len(res.Items))
	}
	return out
}

// A hook whose environment carries a secret prints it and fails: the
// log tail (sent, since UPDATER_REPORT_HOOK_LOGS=true) and the failure
// reason carry "<redacted>" in its place, in Slack, Rollbar, the API,
// the Swarm records and the updater log alike.
func TestSecretsHookOutputRedacted(t *testing.T) {
	const stack, repo, svcName = "e2esecrethook", "e2e/secrethook", "e2esecrethook_app"
	marker := fmt.Sprintf("e2e-hook-marker-%d", time.Now().UnixNano())
	addSecret("hook env marker", marker)
	sl, rb := fakeSlack(t), fakeRollbar(t)
	hookImage := backupImage(t) // a shell
	hookRepo, _, _ := strings.Cut(hookImage, ":latest@")

	v1 := push(t, repo, "v1")
	app := createService(t, svcName, repo, v1, svcOpts{stack: stack, optIn: true, labels: map[string]string{
		"updater.backup.image":   hookImage,
		"updater.backup.command": `sh -c 'echo "connecting with $HOOK_TOKEN"; exit 1'`,
		"updater.backup.env":     "HOOK_TOKEN=" + marker,
		"updater.hooks.timeout":  "60s",
	}})
	u := startUpdater(t, stack, append(append([]string{"UPDATER_HOOK_IMAGES=" + hookRepo, "UPDATER_REPORT_HOOK_LOGS=true"},
		append(slackBotEnv(sl), rollbarEnv(rb)...)...), httpEnv()...)...)
	base := u.base(t)
	waitFor(t, 30*time.Second, "a first cycle", func() bool { return u.cycles() >= 1 })

	v2 := push(t, repo, "v2")
	u.waitLog(t, deployLimit, 1, "deploy failed", "service", svcName, "to_digest", v2)
	if reason := fmt.Sprint(u.find("deploy failed", "service", svcName)["err"]); reason != "backup exited with code 1: connecting with <redacted>" {
		t.Errorf("the failure reason is %q, want the job's last line with the secret redacted", reason)
	}
	waitFor(t, 30*time.Second, "Slack's reply with the job's last lines, and the Rollbar deploy closed", func() bool {
		replied := false
		for _, c := range sl.Accepted() {
			replied = replied || strings.Contains(c.Content(), "Last lines of the backup job")
		}
		d := rb.Deploys()
		return replied && len(d) == 1 && len(d[0].Statuses) == 2
	})
	sent := false
	for where, out := range updaterOutputs(t, u, sl, rb, base, app) {
		if strings.Contains(out, marker) {
			t.Errorf("%s shows the hook's secret:\n%s", where, out)
		}
		// Slack's text escapes < and >.
		sent = sent || strings.HasPrefix(where, "Slack") && strings.Contains(out, "connecting with &lt;redacted&gt;")
	}
	if !sent {
		t.Error("no Slack message carries the redacted log tail: the tail was not reported at all")
	}
}

// A bad env label whose value holds a password: the deploy is refused
// naming the label and the bad entry, and the password appears nowhere
// but in the label itself.
func TestSecretsBadEnvLabelMasked(t *testing.T) {
	const stack, repo, svcName = "e2esecretenv", "e2e/secretenv", "e2esecretenv_app"
	password := fmt.Sprintf("e2e-label-password-%d", time.Now().UnixNano())
	addSecret("env label password", password)
	sl, rb := fakeSlack(t), fakeRollbar(t)

	v1 := push(t, repo, "v1")
	app := createService(t, svcName, repo, v1, svcOpts{stack: stack, optIn: true, labels: map[string]string{
		"updater.backup.command": "/app health",
		// A comma in the password splits it: the tail is an entry with no key.
		"updater.backup.env": "PGUSER=app,PGPASSWORD=" + password + ",x" + password,
	}})
	u := startUpdater(t, stack, append(append(slackBotEnv(sl), rollbarEnv(rb)...), httpEnv()...)...)
	base := u.base(t)
	waitFor(t, 30*time.Second, "a first cycle", func() bool { return u.cycles() >= 1 })

	v2 := push(t, repo, "v2")
	u.waitLog(t, deployLimit, 1, "deploy failed", "service", svcName, "to_digest", v2)
	reason := fmt.Sprint(u.find("deploy failed", "service", svcName)["err"])
	for _, want := range []string{"updater.backup.env (value not shown", "entry 3 (***)"} {
		if !strings.Contains(reason, want) {
			t.Errorf("the refusal %q lacks %q", reason, want)
		}
	}
	waitFor(t, 30*time.Second, "the Rollbar deploy closed", func() bool {
		d := rb.Deploys()
		return len(d) == 1 && len(d[0].Statuses) == 2
	})
	for where, out := range updaterOutputs(t, u, sl, rb, base, app) {
		if strings.Contains(out, password) {
			t.Errorf("%s shows the label's password:\n%s", where, out)
		}
	}
	if !strings.Contains(inspect(t, app).Spec.Labels["updater.backup.env"], password) {
		t.Fatal("the label lost the password: the scan looked for the wrong thing")
	}
}
