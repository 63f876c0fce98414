package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// maxTagPages bounds one listing. go-containerregistry follows a
// registry's Link header for as long as it is sent, so a registry that
// links a page to itself would keep us until the deadline. It asks for
// 1000 tags a page (n=1000); a registry that caps its pages at 100 still
// fits 100,000 tags in a thousand of them.
const maxTagPages = 1000

// Tags lists the tags of repo ("[registry[:port]/]repository"; a tag or
// digest after it is ignored, so an image reference will do). It is
// GET /v2/<name>/tags/list and, when the registry paginates, one more GET
// per page, following the Link header (go-containerregistry's Lister,
// which also refuses a next page on another host). It shares Digest's
// session for the repository: after a Digest, listing costs no ping or
// token exchange, and the other way round.
func (c *Client) Tags(ctx context.Context, repo string) ([]string, error) {
	r, err := c.parseRef(repo)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	rp := r.Context()
	p, kept, err := c.session(rp)
	if err != nil {
		return nil, fmt.Errorf("list tags of %s: %w", rp, err)
	}
	tags, err := listTags(ctx, p, rp)
	if err != nil && kept && refused(err) {
		// As in Digest: a kept session may hold credentials rotated since.
		c.forget(rp, p)
		if p, _, err = c.session(rp); err != nil {
			return nil, fmt.Errorf("list tags of %s: %w", rp, err)
		}
		tags, err = listTags(ctx, p, rp)
	}
	if err != nil {
		if refused(err) {
			c.forget(rp, p)
		}
		return nil, describeList(ctx, rp, err)
	}
	c.keep(rp, p)
	return tags, nil
}

func listTags(ctx context.Context, p *remote.Puller, repo name.Repository) ([]string, error) {
	l, err := p.Lister(ctx, repo)
	if err != nil {
		return nil, err
	}
	tags := []string{}
	for pages := 0; l.HasNext(); pages++ {
		if pages == maxTagPages {
			return nil, fmt.Errorf("more than %d pages of tags: the registry keeps sending a next page", maxTagPages)
		}
		page, err := l.Next(ctx)
		if err != nil {
			return nil, err
		}
		tags = append(tags, page.Tags...)
	}
	return tags, nil
}

// describeList is describe for a listing: same classes, its own words. A
// 404 of the list itself is a missing repository (Distribution says
// NAME_UNKNOWN; some registries send no body).
func describeList(ctx context.Context, repo name.Repository, err error) error {
	var te *transport.Error
	switch {
	case errors.As(err, &te):
		se := classify(te)
		if se.kind == nil && te.StatusCode == http.StatusNotFound && te.Request != nil && te.Request.URL != nil &&
			strings.HasSuffix(te.Request.URL.Path, "/tags/list") {
			se.kind = ErrNotFound
			if se.detail == "" {
				se.detail = "no such repository"
			}
		}
		return fmt.Errorf("list tags of %s: %w", repo, se)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("list tags of %s: registry did not answer in time: %w", repo, err)
	case ctx.Err() != nil && !errors.Is(err, ctx.Err()):
		return fmt.Errorf("list tags of %s: %w: %v", repo, ctx.Err(), err)
	default:
		return fmt.Errorf("list tags of %s: %w", repo, err)
	}
}
