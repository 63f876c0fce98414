//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/swarm"
)

// BenchmarkHookJobOverhead is what running a hook costs beyond its
// command: create the Swarm job, schedule and start its task, see it
// complete, read its logs, remove it. The command is `true`, so nearly all
// of each op is overhead. Run: make bench-e2e.
func BenchmarkHookJobOverhead(b *testing.B) {
	img := backupImage(b)
	sw, err := swarm.New(swarm.Config{Label: "updater.enable"})
	if err != nil {
		b.Fatal(err)
	}
	defer sw.Close()
	ctx := context.Background()
	v1 := push(b, "e2e/bench", "v1")
	host := createService(b, "e2ebench_host", "e2e/bench", v1, svcOpts{stack: "e2ebench"})
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		res, err := sw.Run(ctx, deploy.Job{
			Name: "e2ebench-backup-" + time.Now().Format("150405.000000")[7:], Phase: deploy.PhaseBackup,
			Service: host, Image: img, Command: []string{"sh", "-c", "true"}, Timeout: time.Minute,
		}, deploy.Credentials{})
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("job: %v exit %d", err, res.ExitCode)
		}
	}
}
