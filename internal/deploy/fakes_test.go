package deploy_test

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
)

// Function-field fakes: a test sets only the behaviour it cares about. An
// unset method that changes something fails loudly; an unset read answers
// "nothing".

type fakeLister struct {
	ListFn func(ctx context.Context) ([]deploy.Target, error)
}

var _ deploy.Lister = (*fakeLister)(nil)

func (f *fakeLister) List(ctx context.Context) ([]deploy.Target, error) {
	if f.ListFn == nil {
		return nil, nil
	}
	return f.ListFn(ctx)
}

type fakeServices struct {
	UpdateFn   func(ctx context.Context, t deploy.Target, image string, creds deploy.Credentials) error
	RolloutFn  func(ctx context.Context, serviceID string) (deploy.Rollout, error)
	RollbackFn func(ctx context.Context, serviceID string) error
}

var _ deploy.Services = (*fakeServices)(nil)

func (f *fakeServices) Update(ctx context.Context, t deploy.Target, image string, creds deploy.Credentials) error {
	if f.UpdateFn == nil {
		return fmt.Errorf("unexpected Update(%s, %s)", t.Name, image)
	}
	return f.UpdateFn(ctx, t, image, creds)
}

func (f *fakeServices) Rollout(ctx context.Context, serviceID string) (deploy.Rollout, error) {
	if f.RolloutFn == nil {
		return deploy.Rollout{}, fmt.Errorf("unexpected Rollout(%s)", serviceID)
	}
	return f.RolloutFn(ctx, serviceID)
}

func (f *fakeServices) Rollback(ctx context.Context, serviceID string) error {
	if f.RollbackFn == nil {
		return fmt.Errorf("unexpected Rollback(%s)", serviceID)
	}
	return f.RollbackFn(ctx, serviceID)
}

type fakeRegistry struct {
	DigestFn      func(ctx context.Context, ref string) (string, error)
	CredentialsFn func(ctx context.Context, ref string) (deploy.Credentials, error)
	LabelsFn      func(ctx context.Context, ref string) (map[string]string, error)
	TagsFn        func(ctx context.Context, ref string) ([]string, error)
}

func (f *fakeRegistry) Tags(ctx context.Context, ref string) ([]string, error) {
	if f.TagsFn == nil {
		return nil, fmt.Errorf("unexpected Tags(%s)", ref)
	}
	return f.TagsFn(ctx, ref)
}

var _ deploy.Registry = (*fakeRegistry)(nil)

func (f *fakeRegistry) Labels(ctx context.Context, ref string) (map[string]string, error) {
	if f.LabelsFn == nil {
		return nil, nil
	}
	return f.LabelsFn(ctx, ref)
}

func (f *fakeRegistry) Digest(ctx context.Context, ref string) (string, error) {
	if f.DigestFn == nil {
		return "", fmt.Errorf("unexpected Digest(%s)", ref)
	}
	return f.DigestFn(ctx, ref)
}

func (f *fakeRegistry) Credentials(ctx context.Context, ref string) (deploy.Credentials, error) {
	if f.CredentialsFn == nil {
		return deploy.Credentials{}, nil
	}
	return f.CredentialsFn(ctx, ref)
}

type fakeLedger struct {
	FailedFn     func(ctx context.Context) (map[string]map[string]bool, error)
	MarkFailedFn func(ctx context.Context, serviceID, digest, reason string) error
	ForgetFn     func(ctx context.Context, serviceID string) error
}

var _ deploy.Ledger = (*fakeLedger)(nil)

func (f *fakeLedger) Failed(ctx context.Context) (map[string]map[string]bool, error) {
	if f.FailedFn == nil {
		return nil, nil
	}
	return f.FailedFn(ctx)
}

func (f *fakeLedger) MarkFailed(ctx context.Context, serviceID, digest, reason string) error {
	if f.MarkFailedFn == nil {
		return nil
	}
	return f.MarkFailedFn(ctx, serviceID, digest, reason)
}

func (f *fakeLedger) Forget(ctx context.Context, serviceID string) error {
	if f.ForgetFn == nil {
		return nil
	}
	return f.ForgetFn(ctx, serviceID)
}

type fakeJournal struct {
	BeginFn    func(ctx context.Context, r deploy.Release) error
	ReachedFn  func(ctx context.Context, r deploy.Release, s deploy.Stage) error
	EndFn      func(ctx context.Context, r deploy.Release) error
	InFlightFn func(ctx context.Context) ([]deploy.Release, error)
}

var _ deploy.Journal = (*fakeJournal)(nil)

func (f *fakeJournal) Begin(ctx context.Context, r deploy.Release) error {
	if f.BeginFn == nil {
		return nil
	}
	return f.BeginFn(ctx, r)
}

func (f *fakeJournal) Reached(ctx context.Context, r deploy.Release, s deploy.Stage) error {
	if f.ReachedFn == nil {
		return nil
	}
	return f.ReachedFn(ctx, r, s)
}

func (f *fakeJournal) End(ctx context.Context, r deploy.Release) error {
	if f.EndFn == nil {
		return nil
	}
	return f.EndFn(ctx, r)
}

func (f *fakeJournal) InFlight(ctx context.Context) ([]deploy.Release, error) {
	if f.InFlightFn == nil {
		return nil, nil
	}
	return f.InFlightFn(ctx)
}

type fakeReporter struct {
	ReportFn func(e deploy.Event)
}

var _ deploy.Reporter = (*fakeReporter)(nil)

func (f *fakeReporter) Report(e deploy.Event) {
	if f.ReportFn != nil {
		f.ReportFn(e)
	}
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
