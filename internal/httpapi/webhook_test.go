package httpapi

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/updater-dev/updater/internal/deploy"
)

// Payloads as the registries send them, cut to what matters plus some of
// what does not.
const (
	dockerHubPush = `{
  "callback_url": "https://registry.hub.docker.com/u/acme/web/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/",
  "push_data": {"pushed_at": 1417566161, "pusher": "ci", "tag": "latest"},
  "repository": {"comment_count": 0, "date_created": 1417494799, "description": "", "is_official": false,
    "is_private": true, "name": "web", "namespace": "acme", "owner": "acme", "repo_name": "acme/web",
    "repo_url": "https://registry.hub.docker.com/u/acme/web/", "star_count": 0, "status": "Active"}
}`
	dockerHubOfficial = `{"push_data": {"tag": "1.27"}, "repository": {"name": "nginx", "namespace": "library", "repo_name": "library/nginx"}}`

	githubPackage = `{
  "action": "published",
  "package": {
    "id": 123, "name": "Web", "namespace": "Acme", "ecosystem": "CONTAINER", "package_type": "CONTAINER",
    "html_url": "https://github.com/orgs/Acme/packages/container/package/web",
    "owner": {"login": "Acme", "type": "Organization"},
    "package_version": {
      "id": 456, "version": "sha256:` + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" + `",
      "container_metadata": {"tag": {"name": "main", "digest": "sha256:0123"}, "labels": null, "manifest": null},
      "package_url": "ghcr.io/acme/web:main"
    },
    "registry": {"about_url": "https://docs.github.com/packages/learn-github-packages/introduction-to-github-packages",
      "name": "GitHub CONTAINER registry", "type": "CONTAINER", "url": "https://ghcr.io", "vendor": "GitHub Inc"}
  },
  "repository": {"full_name": "Acme/web"},
  "sender": {"login": "ci-bot"}
}`
	githubRegistryPackage = `{"action": "published", "registry_package": {"name": "api", "namespace": "acme", "package_type": "container",
    "package_version": {"container_metadata": {"tag": {"name": "v2"}}}}}`
	githubNPM = `{"action": "published", "package": {"name": "lib", "namespace": "acme", "package_type": "npm",
    "package_version": {"npm_metadata": {}}}}`
	githubUntagged = `{"action": "published", "package": {"name": "web", "namespace": "acme", "package_type": "container",
    "package_version": {"container_metadata": {"tag": {"name": "", "digest": "sha256:0123"}}}}}`

	distributionPush = `{"events": [
  {"id": "320678d8-ca14-430f-8bb6-4ca139cd83f7", "timestamp": "2016-03-09T14:44:26.402973972-08:00", "action": "push",
   "target": {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 32, "digest": "sha256:a3ed",
     "length": 32, "repository": "team/app", "url": "http://registry.local:5000/v2/team/app/blobs/sha256:a3ed"},
   "request": {"id": "6df24a34-0959-4923-81ca-14f09767db19", "addr": "192.168.64.11:42961", "host": "192.168.100.227:5000",
     "method": "PUT", "useragent": "curl/7.38.0"}, "actor": {}, "source": {"addr": "xtal.local:5000", "instanceID": "a53db899"}},
  {"id": "6a2d4d1c", "action": "push",
   "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": "sha256:fea8",
     "repository": "team/app", "url": "http://registry.local:5000/v2/team/app/manifests/sha256:fea8", "tag": "latest"},
   "request": {"host": "192.168.100.227:5000", "method": "PUT"}},
  {"id": "6a2d4d1d", "action": "push",
   "target": {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:fea8",
     "repository": "team/app", "tag": "latest"}},
  {"id": "6a2d4d1e", "action": "pull", "target": {"repository": "team/other", "tag": "latest"}}
]}`
	distributionBlobsOnly = `{"events": [{"action": "push", "target": {"repository": "team/app", "digest": "sha256:a3ed"}}]}`
)

func TestParsePushes(t *testing.T) {
	tests := []struct {
		name, source, event, body string
		want                      []deploy.Push
		ignored                   bool
		err                       string // a substring of the error, for payloads refused
	}{
		{"docker hub", srcDockerHub, "", dockerHubPush, []deploy.Push{{Registry: "docker.io", Repository: "acme/web", Tag: "latest"}}, false, ""},
		{"docker hub official", srcDockerHub, "", dockerHubOfficial, []deploy.Push{{Registry: "docker.io", Repository: "library/nginx", Tag: "1.27"}}, false, ""},
		{"docker hub name parts", srcDockerHub, "", `{"push_data":{"tag":"v1"},"repository":{"namespace":"acme","name":"api"}}`,
			[]deploy.Push{{Registry: "docker.io", Repository: "acme/api", Tag: "v1"}}, false, ""},
		{"docker hub no tag", srcDockerHub, "", `{"push_data":{},"repository":{"repo_name":"acme/web"}}`, nil, false, "no push_data.tag"},
		{"docker hub no repository", srcDockerHub, "", `{"push_data":{"tag":"latest"}}`, nil, false, "no repository.repo_name"},
		{"docker hub wrong types", srcDockerHub, "", `{"push_data":{"tag":1},"repository":{"repo_name":"acme/web"}}`, nil, false, "not JSON"},

		{"github package", srcGitHub, "package", githubPackage, []deploy.Push{{Registry: "ghcr.io", Repository: "acme/web", Tag: "main"}}, false, ""},
		{"github registry_package", srcGitHub, "registry_package", githubRegistryPackage, []deploy.Push{{Registry: "ghcr.io", Repository: "acme/api", Tag: "v2"}}, false, ""},
		{"github updated", srcGitHub, "package", strings.Replace(githubPackage, `"published"`, `"updated"`, 1),
			[]deploy.Push{{Registry: "ghcr.io", Repository: "acme/web", Tag: "main"}}, false, ""},
		{"github ping", srcGitHub, "ping", `{"zen": "Keep it logically awesome.", "hook_id": 1}`, nil, true, ""},
		{"github push event", srcGitHub, "push", `{"ref": "refs/heads/main"}`, nil, true, ""},
		{"github npm", srcGitHub, "package", githubNPM, nil, true, ""},
		{"github untagged", srcGitHub, "package", githubUntagged, nil, true, ""},
		{"github no package", srcGitHub, "package", `{"action":"published"}`, nil, false, "no package"},
		{"github no metadata", srcGitHub, "package", `{"action":"published","package":{"name":"web","namespace":"acme","package_type":"container"}}`,
			nil, false, "no package_version.container_metadata"},
		{"github no namespace", srcGitHub, "package", `{"action":"published","package":{"name":"web","package_type":"container",
			"package_version":{"container_metadata":{"tag":{"name":"main"}}}}}`, nil, false, "no package name or namespace"},
		{"github broken JSON", srcGitHub, "package", `{"action":`, nil, false, "not JSON"},

		{"distribution", srcDistribution, "", distributionPush, []deploy.Push{{Repository: "team/app", Tag: "latest"}}, false, ""},
		{"distribution blobs only", srcDistribution, "", distributionBlobsOnly, nil, true, ""},
		{"distribution empty", srcDistribution, "", `{"events": []}`, nil, true, ""},
		{"distribution no repository", srcDistribution, "", `{"events": [{"action":"push","target":{"tag":"latest"}}]}`, nil, false, "no target.repository"},
		{"distribution events not a list", srcDistribution, "", `{"events": {}}`, nil, false, "not JSON"},

		{"unknown", srcUnknown, "", `{"hello": "world"}`, nil, false, "unknown payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePushes(tt.source, tt.event, []byte(tt.body))
			var ign errIgnored
			switch {
			case tt.ignored:
				if !errors.As(err, &ign) {
					t.Fatalf("got %v, %v; want it ignored", got, err)
				}
			case tt.err != "":
				if err == nil || errors.As(err, &ign) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, %v; want an error with %q", got, err, tt.err)
				}
			default:
				if err != nil || !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("got %v, %v; want %v", got, err, tt.want)
				}
			}
		})
	}
}

func TestSourceOf(t *testing.T) {
	gh := httptest.NewRequest("POST", "/hooks/registry", nil)
	gh.Header.Set("X-GitHub-Event", "package")
	dist := httptest.NewRequest("POST", "/hooks/registry", nil)
	dist.Header.Set("Content-Type", "application/vnd.docker.distribution.events.v1+json")
	plain := httptest.NewRequest("POST", "/hooks/registry", nil)
	for _, tt := range []struct {
		r    *http.Request
		body string
		want string
	}{
		{gh, `{}`, srcGitHub},
		{dist, `garbage`, srcDistribution},
		{plain, distributionPush, srcDistribution},
		{plain, dockerHubPush, srcDockerHub},
		{plain, `{"a":1}`, srcUnknown},
		{plain, `not json`, srcUnknown},
	} {
		if got := sourceOf(tt.r, []byte(tt.body)); got != tt.want {
			t.Errorf("sourceOf(%.30q) = %s, want %s", tt.body, got, tt.want)
		}
	}
}

func sign(body, key string) string {
	mac := hmac.New(sha256.New, []byte(key))
	mac.Write([]byte(body))
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// The webhook endpoint end to end on fakes: who gets in, what is asked
// for, and that a refused request asks for nothing.
func TestWebhookHandler(t *testing.T) {
	event := func(name, body, sig string) *http.Request {
		r := httptest.NewRequest("POST", "/hooks/registry", strings.NewReader(body))
		r.Header.Set("X-GitHub-Event", name)
		if sig != "" {
			r.Header.Set("X-Hub-Signature-256", sig)
		}
		return r
	}
	github := func(body, sig string) *http.Request { return event("package", body, sig) }
	plain := func(target, body, bearer string) *http.Request {
		r := httptest.NewRequest("POST", target, strings.NewReader(body))
		if bearer != "" {
			r.Header.Set("Authorization", "Bearer "+bearer)
		}
		return r
	}
	ghcr := []deploy.Push{{Registry: "ghcr.io", Repository: "acme/web", Tag: "main"}}
	tests := []struct {
		name   string
		req    *http.Request
		status int
		pushes []deploy.Push
		count  string
	}{
		{"signed", github(githubPackage, sign(githubPackage, secret)), http.StatusAccepted, ghcr, "github accepted"},
		{"signed with another key", github(githubPackage, sign(githubPackage, "another-secret-0123456789")), http.StatusUnauthorized, nil, "github unauthorized"},
		{"signature of another body", github(githubPackage, sign(githubPackage+" ", secret)), http.StatusUnauthorized, nil, "github unauthorized"},
		{"signature without prefix", github(githubPackage, strings.TrimPrefix(sign(githubPackage, secret), "sha256=")), http.StatusUnauthorized, nil, "github unauthorized"},
		{"sha1 signature", github(githubPackage, "sha1="+strings.Repeat("0", 40)), http.StatusUnauthorized, nil, "github unauthorized"},
		{"signature not hex", github(githubPackage, "sha256=zz"), http.StatusUnauthorized, nil, "github unauthorized"},
		{"truncated signature", github(githubPackage, sign(githubPackage, secret)[:40]), http.StatusUnauthorized, nil, "github unauthorized"},
		{"unsigned", github(githubPackage, ""), http.StatusUnauthorized, nil, "github unauthorized"},
		{"bad signature beats a good token", func() *http.Request {
			r := github(githubPackage, "sha256=00")
			r.Header.Set("Authorization", "Bearer "+secret)
			return r
		}(), http.StatusUnauthorized, nil, "github unauthorized"},
		{"signed ping", event("ping", `{"zen":"hi"}`, sign(`{"zen":"hi"}`, secret)), http.StatusOK, nil, "github ignored"},
		{"docker hub with token parameter", plain("/hooks/registry?token="+secret, dockerHubPush, ""), http.StatusAccepted,
			[]deploy.Push{{Registry: "docker.io", Repository: "acme/web", Tag: "latest"}}, "dockerhub accepted"},
		{"docker hub with a wrong token", plain("/hooks/registry?token=nope", dockerHubPush, ""), http.StatusUnauthorized, nil, "dockerhub unauthorized"},
		{"docker hub with a token prefix", plain("/hooks/registry?token="+secret[:len(secret)-1], dockerHubPush, ""), http.StatusUnauthorized, nil, "dockerhub unauthorized"},
		{"distribution with bearer", plain("/hooks/registry", distributionPush, secret), http.StatusAccepted,
			[]deploy.Push{{Repository: "team/app", Tag: "latest"}}, "distribution accepted"},
		{"distribution with the API token", plain("/hooks/registry", distributionPush, apiToken), http.StatusUnauthorized, nil, "distribution unauthorized"},
		{"no auth at all", plain("/hooks/registry", distributionPush, ""), http.StatusUnauthorized, nil, "unknown unauthorized"},
		{"bad payload, authenticated", plain("/hooks/registry", `{"hello":"world"}`, secret), http.StatusBadRequest, nil, "unknown bad_request"},
		{"bad payload, not authenticated", plain("/hooks/registry", `{"hello":"world"}`, ""), http.StatusUnauthorized, nil, "unknown unauthorized"},
		{"broken docker hub payload", plain("/hooks/registry?token="+secret, `{"push_data":{"tag":"x"}}`, ""), http.StatusBadRequest, nil, "dockerhub bad_request"},
		{"docker hub payload with a bearer token", plain("/hooks/registry", dockerHubPush, secret), http.StatusBadRequest, nil, "distribution bad_request"},
		{"distribution payload with the token parameter", plain("/hooks/registry?token="+secret, distributionPush, ""), http.StatusBadRequest, nil, "dockerhub bad_request"},
		{"ignored", plain("/hooks/registry", distributionBlobsOnly, secret), http.StatusOK, nil, "distribution ignored"},
		{"too big", plain("/hooks/registry", `{"events":[`+strings.Repeat(" ", maxWebhookBody)+`]}`, secret), http.StatusRequestEntityTooLarge, nil, "distribution too_large"},
		{"too big, no length", func() *http.Request {
			r := plain("/hooks/registry", "", secret)
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader(`{"events":[`+strings.Repeat(" ", maxWebhookBody)+`]}`)), -1
			return r
		}(), http.StatusRequestEntityTooLarge, nil, "distribution too_large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t)
			rec := r.do(tt.req)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}
			pushes, checks, deploys := r.requests.asked()
			if !reflect.DeepEqual(pushes, tt.pushes) || checks != 0 || len(deploys) != 0 {
				t.Fatalf("asked for pushes %v, %d checks, deploys %v; want pushes %v only", pushes, checks, deploys, tt.pushes)
			}
			if tt.count != "" && r.counter.counts[tt.count] != 1 {
				t.Errorf("counts %v, want %q once", r.counter.counts, tt.count)
			}
			if strings.Contains(r.logs.String(), secret) {
				t.Error("the log shows the webhook secret")
			}
		})
	}
}

func TestWebhooksOff(t *testing.T) {
	r := newRig(t, func(c *Config) { c.WebhookSecret = "" })
	req := httptest.NewRequest("POST", "/hooks/registry?token=", strings.NewReader(dockerHubPush))
	if rec := r.do(req); rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "UPDATER_WEBHOOK_SECRET") {
		t.Fatalf("status %d %s, want 403 naming the setting", rec.Code, rec.Body)
	}
	if p, _, _ := r.requests.asked(); len(p) != 0 {
		t.Fatal("a webhook was taken with webhooks off")
	}
}

// FuzzParsePushes: whatever the body, the parsers answer with pushes or
// an error, never a panic and never neither, and a push always names a
// repository and tag.
func FuzzParsePushes(f *testing.F) {
	for _, s := range []string{dockerHubPush, dockerHubOfficial, githubPackage, githubRegistryPackage, githubNPM,
		distributionPush, distributionBlobsOnly, `{"events":[{}]}`, `null`, `[]`, `{"push_data":null}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, src := range []string{srcDockerHub, srcGitHub, srcDistribution} {
			pushes, err := parsePushes(src, "package", []byte(body))
			checkPushes(t, src, body, pushes, err)
		}
	})
}
