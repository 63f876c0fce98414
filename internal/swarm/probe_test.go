package swarm

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"

	"github.com/updater-dev/updater/internal/deploy"
)

const newDigest = "sha256:" + "1111111111111111111111111111111111111111111111111111111111111111"

func att(id, name, addr string) swarm.NetworkAttachment {
	a := swarm.NetworkAttachment{Network: swarm.Network{ID: id, Spec: swarm.NetworkSpec{Annotations: swarm.Annotations{Name: name}}}}
	if addr != "" {
		a.Addresses = []netip.Prefix{netip.MustParsePrefix(addr)}
	}
	return a
}

func probeTask(id, digest string, state swarm.TaskState, nets []string, atts ...swarm.NetworkAttachment) swarm.Task {
	t := swarm.Task{ID: id, NodeID: "node-" + id, DesiredState: swarm.TaskStateRunning, NetworksAttachments: atts}
	t.Status.State = state
	t.Spec.ContainerSpec = &swarm.ContainerSpec{Image: "reg.example/shop/web:1@" + digest}
	for _, n := range nets {
		t.Spec.Networks = append(t.Spec.Networks, swarm.NetworkAttachmentConfig{Target: n})
	}
	return t
}

func TestProbeTargets(t *testing.T) {
	tg := deploy.Target{ID: "svc", Name: "shop_web", Stack: "shop"}
	p := deploy.Probe{URL: "http://{task}:8080/orders?svc={service}&d={digest}"}
	ingress := att("ing", "ingress", "10.0.0.9/24")
	ingress.Network.Spec.Ingress = true
	tasks := []swarm.Task{
		probeTask("b", newDigest, swarm.TaskStateRunning, []string{"front", "back"}, ingress, att("back", "shop_backend", "10.0.2.5/24"), att("front", "shop_default", "10.0.1.5/24")),
		probeTask("a", newDigest, swarm.TaskStateRunning, []string{"front", "back"}, att("front", "shop_default", "10.0.1.4/24"), att("back", "shop_backend", "10.0.2.4/24")),
		// The old version still stopping, and a new task not up yet: not probed.
		probeTask("old", "sha256:0000", swarm.TaskStateRunning, []string{"front"}, att("front", "shop_default", "10.0.1.3/24")),
		probeTask("starting", newDigest, swarm.TaskStateStarting, []string{"front"}, att("front", "shop_default", "10.0.1.6/24")),
	}
	for _, tc := range []struct {
		network, wantNet string
		wantURLs         []string
	}{
		{"", "front", []string{"http://10.0.1.4:8080/", "http://10.0.1.5:8080/"}},
		{"backend", "back", []string{"http://10.0.2.4:8080/", "http://10.0.2.5:8080/"}},      // as the stack file names it
		{"shop_backend", "back", []string{"http://10.0.2.4:8080/", "http://10.0.2.5:8080/"}}, // as Docker does
		{"back", "back", []string{"http://10.0.2.4:8080/", "http://10.0.2.5:8080/"}},         // by ID
	} {
		p.Network = tc.network
		net, got, err := probeTargets(tasks, tg, newDigest, p)
		if err != nil {
			t.Fatalf("network %q: %v", tc.network, err)
		}
		if net != tc.wantNet || len(got) != 2 || got[0].Task != "a" || got[1].Task != "b" || got[0].Node != "node-a" {
			t.Fatalf("network %q: %s %+v", tc.network, net, got)
		}
		for i, u := range tc.wantURLs {
			if want := u + "orders?svc=shop_web&d=" + newDigest; got[i].URL != want {
				t.Errorf("network %q: URL %s, want %s", tc.network, got[i].URL, want)
			}
		}
	}

	p.Network = "payments"
	if _, _, err := probeTargets(tasks, tg, newDigest, p); err == nil ||
		!strings.Contains(err.Error(), `label updater.probe.network="payments"`) || !strings.Contains(err.Error(), "shop_backend, shop_default") {
		t.Errorf("another network: %v", err)
	}
	p.Network = ""
	if _, _, err := probeTargets(tasks[2:], tg, newDigest, p); err == nil || !strings.Contains(err.Error(), "no running task of sha256:111111111111 to probe") {
		t.Errorf("no new task running: %v", err)
	}
	six := []swarm.Task{probeTask("v6", newDigest, swarm.TaskStateRunning, []string{"n"}, att("n", "v6net", "fd00::5/64"))}
	if _, got, err := probeTargets(six, tg, newDigest, p); err != nil || !strings.HasPrefix(got[0].URL, "http://[fd00::5]:8080/") {
		t.Errorf("IPv6: %+v, %v", got, err)
	}
}

func TestProbeNetworkLabel(t *testing.T) {
	task := probeTask("a", newDigest, swarm.TaskStateRunning, []string{"front"}, att("front", "shop_default", "10.0.1.4/24"))
	if _, err := probeAttachment(task, "shop", "default"); err != nil {
		t.Errorf("the stack file's name: %v", err)
	}
	if _, err := probeAttachment(task, "", "default"); err == nil {
		t.Errorf("outside a stack, default is not shop_default")
	}
	_, err := probeAttachment(task, "shop", "backend")
	if err == nil || !strings.Contains(err.Error(), `label updater.probe.network="backend"`) || !strings.Contains(err.Error(), "its tasks are on shop_default") ||
		!strings.Contains(err.Error(), "as the stack file does") {
		t.Errorf("a network the service is not on: %v", err)
	}
}

func TestReadProbeResults(t *testing.T) {
	targets := []ProbeTarget{{Task: "a", Node: "n1", URL: "http://10.0.1.4/?token=s3cret"}, {Task: "b", Node: "n2", URL: "http://10.0.1.5/?token=s3cret"},
		{Task: "c", Node: "n3", URL: "http://10.0.1.6/?token=s3cret"}}
	lines := []string{
		"some warning on stderr",
		`{"Task":"b","URL":"http://10.0.1.5/?token=s3cret","OK":false,"Passed":1,"Status":500,"Err":"got 500","Body":"` + strings.Repeat("x", 300) + `"}`,
		`{"Task":"a","URL":"http://10.0.1.4/?token=xxxxx","OK":true,"Passed":3}`,
		`{"Task":"zz","OK":true}`, // not a task probed
	}
	out, got := readProbeResults(lines, targets)
	if got != 2 || len(out) != 3 {
		t.Fatalf("got %d, results %+v", got, out)
	}
	if !out[0].OK || out[0].Node != "n1" || out[1].OK || out[1].Status != 500 || len(out[1].Body) != deploy.ProbeBodyMax || out[1].Node != "n2" {
		t.Errorf("results %+v", out[:2])
	}
	if out[2].OK || out[2].Task != "c" || !strings.Contains(out[2].Err, "reported nothing") {
		t.Errorf("a task the job said nothing of: %+v", out[2])
	}
	for _, r := range out {
		if strings.Contains(r.URL, "s3cret") {
			t.Errorf("URL %s: the token is not masked", r.URL)
		}
	}
}

func TestProbeSpec(t *testing.T) {
	e, _ := deploy.ParseExpect("200,204 body~=ok, fine")
	p := deploy.Probe{Expect: e, Count: 4, Interval: 1500 * time.Millisecond, Timeout: 3 * time.Second, Header: "Host: shop.example.com"}
	targets := []ProbeTarget{{"a", "node1", "http://10.0.1.4:8080/"}, {"b", "", "http://10.0.1.5:8080/x,y"}}
	s := probeSpec("shop_web-probe-1234", deploy.Target{ID: "svc", Name: "shop_web", Stack: "shop"}, p, "netid", "reg/updater@sha256:9", targets, "scope1")
	c := s.TaskTemplate.ContainerSpec
	want := []string{"probe", "--expect", "200,204 body~=ok, fine", "--count", "4", "--interval", "1.5s", "--timeout", "3s",
		"--header", "Host: shop.example.com", "a,node1,http://10.0.1.4:8080/", "b,,http://10.0.1.5:8080/x,y"}
	if !slices.Equal(c.Args, want) || c.Image != "reg/updater@sha256:9" {
		t.Errorf("args %q, want %q", c.Args, want)
	}
	if s.Mode.ReplicatedJob == nil || s.TaskTemplate.RestartPolicy.Condition != swarm.RestartPolicyConditionNone {
		t.Errorf("mode %+v: want a one-off job that is never restarted", s.Mode)
	}
	if len(s.TaskTemplate.Networks) != 1 || s.TaskTemplate.Networks[0].Target != "netid" {
		t.Errorf("networks %+v: want the service's network", s.TaskTemplate.Networks)
	}
	if c.User != "65534:65534" || !c.ReadOnly || !slices.Equal(c.CapabilityDrop, []string{"ALL"}) || len(c.Mounts) != 0 || len(c.Env) != 0 {
		t.Errorf("container %+v: want it hardened, with nothing of the service's", c)
	}
	if s.Labels[jobLabel] != "svc" || s.Labels[jobStepLabel] != stepProbe || s.Labels[scopeLabel] != "scope1" ||
		c.Labels[jobLabel] != "svc" || c.Labels[scopeLabel] != "scope1" {
		t.Errorf("labels %v / %v: Clean and the leftover checks find a job by them", s.Labels, c.Labels)
	}
	if a, b := probeJobName("shop_web"), probeJobName("shop_web"); a == b || !strings.HasPrefix(a, "shop_web-probe-") || len(probeJobName(strings.Repeat("x", 80))) > 63 {
		t.Errorf("job names %s, %s: want them unique and within 63 characters", a, b)
	}
}
