package swarm

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/moby/moby/api/types/swarm"

	"github.com/updater-dev/updater/internal/deploy"
)

// A service's durable history is one record (kindHistory) holding its last
// deploy.HistoryMax deploys, newest first. A record can't be edited, so
// each AddHistory writes the next one and removes the one before. The
// records of a service are numbered (seqLabel, and in the name), and the
// highest number is the history:
//
//   - Two writers that read the same record both try to create the next
//     number; Swarm lets one name be created once, so one of them gets a
//     conflict, reads the winner's record and tries again on top of it.
//   - A number can be created again once its first record was removed, but
//     a record is removed only after a higher one was written: so a writer
//     lists again after its create, and when a higher number is there, its
//     own record is not the history; it reads the newest and tries again.
//
// So no entry is lost to a race between two updaters (an old one and its
// replacement, a local `updater rollback`), without a lock in Swarm; inside
// one process the pipeline runs at most one deploy per service at a time,
// so races are rare and a few retries are enough.
//
// Size: every string of an entry is made valid UTF-8 without control
// characters and capped (the reason at deploy.HistoryReasonMax bytes), so
// JSON at most doubles it (a quote or backslash becomes two bytes, U+2028
// six for its three). An entry is at most 2×(64+512+2×136+2×32+64+300) +
// about 300 bytes of names, times and punctuation, about 2.9 KB; a record
// of deploy.HistoryMax of them about 57 KB (TestHistoryWorstCaseSize
// measures it), against Swarm's 500 KB for a config. Real entries are a
// few hundred bytes.
const (
	seqLabel = "io.updater.seq"
	// historyAttempts bounds the writes one AddHistory tries when other
	// writers keep winning.
	historyAttempts = 8
)

// historyRecord is a history record's data.
type historyRecord struct {
	Entries []deploy.HistoryEntry `json:"entries"`
}

var _ deploy.Histories = (*Swarm)(nil)

// History is the service's deploys, newest first.
func (s *Swarm) History(ctx context.Context, serviceID string) ([]deploy.HistoryEntry, error) {
	st := s.store()
	for range historyAttempts {
		items, err := st.list(ctx, kindHistory, serviceLabel+"="+serviceID, scopeLabel+"="+s.scope())
		if err != nil {
			return nil, unavailable(err)
		}
		newest, _ := newestHistory(items)
		if newest == nil {
			return nil, nil
		}
		entries, err := s.readHistory(ctx, *newest)
		if isNotFound(err) {
			continue // replaced since listed: the newer one is the history
		}
		return entries, err
	}
	return nil, fmt.Errorf("read history of %s: replaced faster than it could be read", serviceID)
}

// AddHistory puts e first in the service's history, replacing an entry of
// the same ID, keeping deploy.HistoryMax.
func (s *Swarm) AddHistory(ctx context.Context, serviceID string, e deploy.HistoryEntry) error {
	st := s.store()
	e = boundEntry(e)
	mine, err := encodeEntry(e)
	if err != nil {
		return fmt.Errorf("encode history entry %s: %w", e.ID, err)
	}
	filter := []string{serviceLabel + "=" + serviceID, scopeLabel + "=" + s.scope()}
	for attempt := range historyAttempts {
		if attempt > 0 {
			// Another writer won: let it finish its removals first.
			if err := pause(ctx, attempt); err != nil {
				return fmt.Errorf("record deploy %s in the history of %s: %w", e.ID, serviceID, err)
			}
		}
		items, err := st.list(ctx, kindHistory, filter...)
		if err != nil {
			return fmt.Errorf("record deploy %s in the history of %s: %w", e.ID, serviceID, unavailable(err))
		}
		newest, seq := newestHistory(items)
		var entries []deploy.HistoryEntry
		if newest != nil {
			entries, err = s.readHistory(ctx, *newest)
			switch {
			case isNotFound(err):
				continue // replaced since listed
			case isUnreadable(err):
				// Edited by hand or written by something else: starting
				// over keeps deploys recorded; the old record goes below.
				s.log().Warn("history record unreadable; starting it over", "record", newest.Spec.Name, "err", err)
				entries = nil
			case err != nil:
				return fmt.Errorf("record deploy %s in the history of %s: %w", e.ID, serviceID, err)
			}
		}
		i := slices.IndexFunc(entries, func(h deploy.HistoryEntry) bool { return h.ID == e.ID })
		if i >= 0 {
			if old, err := encodeEntry(entries[i]); err == nil && bytes.Equal(old, mine) {
				return nil // already there as it is (ours, written by a winner built on it, or reported twice)
			}
			entries = slices.Delete(entries, i, i+1)
		}
		entries = append([]deploy.HistoryEntry{e}, entries...)
		if len(entries) > deploy.HistoryMax {
			entries = entries[:deploy.HistoryMax]
		}
		data, err := encodeHistory(entries)
		if err != nil {
			return fmt.Errorf("encode history of %s: %w", serviceID, err)
		}
		seq++
		name := historyName(serviceID, s.scope(), seq)
		labels := map[string]string{serviceLabel: serviceID, scopeLabel: s.scope(), seqLabel: strconv.FormatUint(seq, 10)}
		err = st.create(ctx, recordSpec(kindHistory, name, labels, data))
		if isConflict(err) {
			continue // another writer took this number: build on its record
		}
		if err != nil {
			return fmt.Errorf("record deploy %s in history record %s: %w", e.ID, name, unavailable(err))
		}
		after, err := st.list(ctx, kindHistory, filter...)
		if err != nil {
			return nil // written; the records before it go next time
		}
		if _, top := newestHistory(after); top > seq {
			// A number taken again after its first record was removed: a
			// newer record is the history, and ours is no part of it.
			if err := st.remove(ctx, name); err != nil {
				s.log().Warn("remove history record written out of turn", "record", name, "err", err)
			}
			continue
		}
		for _, c := range after {
			if c.Spec.Name != name {
				if err := st.remove(ctx, c.ID); err != nil {
					s.log().Warn("remove replaced history record", "record", c.Spec.Name, "err", err)
				}
			}
		}
		return nil
	}
	return fmt.Errorf("record deploy %s in the history of %s: other writers won %d times", e.ID, serviceID, historyAttempts)
}

// pause waits a little, more for each attempt, with jitter so that two
// losers don't collide again.
func pause(ctx context.Context, attempt int) error {
	d := time.Duration(attempt)*20*time.Millisecond + rand.N(20*time.Millisecond)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// errUnreadable marks a history record whose data is not one.
type errUnreadable struct{ err error }

func (e errUnreadable) Error() string { return "not a history record: " + e.err.Error() }
func (e errUnreadable) Unwrap() error { return e.err }

func isUnreadable(err error) bool {
	_, ok := err.(errUnreadable)
	return ok
}

// readHistory decodes a listed history record.
func (s *Swarm) readHistory(ctx context.Context, c swarm.Config) ([]deploy.HistoryEntry, error) {
	data, err := s.store().data(ctx, c)
	if err != nil {
		return nil, unavailable(err)
	}
	var r historyRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, errUnreadable{fmt.Errorf("record %s: %w", c.Spec.Name, err)}
	}
	if len(r.Entries) > deploy.HistoryMax {
		r.Entries = r.Entries[:deploy.HistoryMax]
	}
	return r.Entries, nil
}

// newestHistory is the highest-numbered record of items, and its number;
// nil and 0 when there is none. A record without a number (not written by
// AddHistory) never counts, and goes with the next write.
func newestHistory(items []swarm.Config) (*swarm.Config, uint64) {
	var newest *swarm.Config
	var top uint64
	for i := range items {
		n, err := strconv.ParseUint(items[i].Spec.Labels[seqLabel], 10, 64)
		if err == nil && n > top {
			newest, top = &items[i], n
		}
	}
	return newest, top
}

// historyName fits Swarm's 64 characters: 16 + 25 (a Swarm ID is 25) +
// 1 + 8 + 1, and 13 digits of numbers.
func historyName(serviceID, scope string, seq uint64) string {
	return fmt.Sprintf("updater-history-%.25s-%.8s-%d", serviceID, scope, seq)
}

// encodeHistory is a record's data. HTML characters stay as they are: the
// record is read by the updater, not a browser, and <>& would take six
// bytes each.
func encodeHistory(entries []deploy.HistoryEntry) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(historyRecord{Entries: entries}); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// encodeEntry is how an entry is compared: by what the record keeps (times
// compare as written, not by their monotonic clock or location pointer).
func encodeEntry(e deploy.HistoryEntry) ([]byte, error) {
	return json.Marshal(e)
}

// boundEntry caps every string of e, so that a record's size has a bound
// whatever a hook printed or a caller named itself.
func boundEntry(e deploy.HistoryEntry) deploy.HistoryEntry {
	e.ID = clean(e.ID, 64)
	e.Ref = clean(e.Ref, 512) // Docker's references: 255 for the name, 128 for the tag
	e.From = clean(e.From, 136)
	e.To = clean(e.To, 136) // sha512: and 128 hex digits
	e.Outcome = deploy.Outcome(clean(string(e.Outcome), 32))
	e.Phase = deploy.Phase(clean(string(e.Phase), 32))
	e.Reason = clean(e.Reason, deploy.HistoryReasonMax)
	e.By = clean(e.By, 64)
	e.Started, e.Ended = e.Started.UTC(), e.Ended.UTC()
	return e
}

// clean makes s valid UTF-8 and turns control characters but newlines and
// tabs into spaces (JSON would spend six bytes on each, and on each invalid
// byte), cut to max bytes on a character boundary.
func clean(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) && r != '\n' && r != '\t' {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
	return capText(s, max)
}
