package notify

import "context"

// Memo keeps what a notifier made for a deploy (a Slack message, a Rollbar
// deploy) where a restarted updater finds it again, so a deploy resumed
// after a crash edits its own message and closes its own Rollbar deploy
// instead of leaving them on "started". A notifier without one (nil)
// remembers in memory only.
type Memo interface {
	// Recall returns the value remembered for the deploy and key.
	Recall(ctx context.Context, deployID, key string) (string, bool, error)
	Remember(ctx context.Context, deployID, key, value string) error
	Drop(ctx context.Context, deployID, key string) error
}
