package app

import (
	"context"
	"log/slog"

	"github.com/updater-dev/updater/internal/config"
	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/swarm"
)

// prober runs the probe jobs of services with updater.probe.url: the
// updater's own image, found once here, unless UPDATER_PROBE_IMAGE names
// another. Without either it is nil (the pipeline then refuses those
// services' deploys), and the log says once why; no service may use a
// probe, so that is no reason to stop.
func prober(ctx context.Context, cfg config.Config, sw *swarm.Swarm, log *slog.Logger) deploy.Prober {
	image := cfg.ProbeImage
	if image == "" {
		var err error
		if image, err = sw.SelfImage(ctx); err != nil {
			log.Info("no image for probe jobs: a service labelled updater.probe.url will not deploy; set UPDATER_PROBE_IMAGE to the updater's image", "err", err)
			return nil
		}
	}
	return swarm.ProbeJobs{Swarm: sw, Image: image}
}
