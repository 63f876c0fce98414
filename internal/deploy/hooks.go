package deploy

import (
	"context"
	"fmt"
	"time"
)

// Hooks are the steps a deploy runs before it touches the service: a
// backup of the data, then the migration of the data to the new version.
// Either may be absent.
type Hooks struct {
	Backup  *Hook
	Migrate *Hook
	// Timeout bounds each hook job, from creation to removal.
	Timeout time.Duration
	// Group names the services deployed together: one backup, one
	// migration, then each service updated; "" deploys the service alone.
	Group string
	// Wave orders the members of a group (updater.wave): each wave is
	// written, judged, probed and baked before the next begins; 0 is none.
	Wave int
	// BackupSchedule is a cron spec for backups apart from deploys.
	BackupSchedule string
	// Approve holds every new digest until a person approves it
	// (updater.approve=manual). It is read with the hooks because it is
	// one more label-configured step before the service is touched.
	Approve bool
}

// Hook is one one-off job.
type Hook struct {
	// Image runs the hook; "" means the service's own image (the new one,
	// for a migration).
	Image   string
	Command []string
	Env     []string // KEY=value
	Mounts  []Mount
}

// Mount is a volume (or, with an absolute Source, a host path) in a job.
type Mount struct {
	Source   string
	Target   string
	ReadOnly bool
}

// Job is a hook made concrete for one deploy.
type Job struct {
	// Name is unique and says whose job it is: "web-migrate-3f2a9c".
	Name  string
	Phase Phase
	// Service is the ID of the service whose networks, secrets and configs
	// the job gets, so it reaches what the service reaches.
	Service string
	// InheritEnv gives the job the service's environment too (migrations
	// connect to the database exactly as the app does).
	InheritEnv bool
	Image      string
	Command    []string
	Env        []string
	Mounts     []Mount
	Timeout    time.Duration
}

// JobResult is how a job ended.
type JobResult struct {
	ExitCode int
	// LogTail is the last lines the job printed, for the report.
	LogTail []string
}

// Jobs runs one-off jobs.
type Jobs interface {
	// Run runs j to completion and always removes it, also on error,
	// timeout or cancellation. A job that ran and exited non-zero is a
	// result, not an error; an error means it could not run or finish.
	Run(ctx context.Context, j Job, creds Credentials) (JobResult, error)
	// Clean removes jobs an earlier run of the updater left behind.
	Clean(ctx context.Context) error
}

// Migrations remembers which digests a service (or group) has migrated
// to, so a migration runs once per digest even across restarts.
type Migrations interface {
	Migrated(ctx context.Context, key, digest string) (bool, error)
	MarkMigrated(ctx context.Context, key, digest string) error
}

// hookEnv tells a hook what it is part of: a backup can name its file
// after the deploy, a migration can log the versions.
func hookEnv(rel Release) []string {
	return []string{
		"UPDATER_DEPLOY_ID=" + rel.ID,
		"UPDATER_SERVICE=" + rel.ServiceName,
		"UPDATER_IMAGE=" + rel.Ref,
		"UPDATER_FROM_DIGEST=" + rel.From,
		"UPDATER_TO_DIGEST=" + rel.To,
	}
}

// jobName fits Swarm's 63-character service names.
func jobName(service string, phase Phase, id string) string {
	if len(service) > 40 {
		service = service[:40]
	}
	return fmt.Sprintf("%s-%s-%.8s", service, phase, id)
}
