package registry

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	"github.com/awslabs/amazon-ecr-credential-helper/ecr-login/api"
	"github.com/google/go-containerregistry/pkg/authn"
)

// ecrTokenLifetime is what ECR documents for its tokens, used only when an
// answer lacks expiresAt.
const ecrTokenLifetime = 12 * time.Hour

// ecrKeychain answers for Amazon ECR registries (ACCOUNT.dkr.ecr.REGION.
// amazonaws.com and the other partitions' names, as amazon-ecr-credential-
// helper recognises them) with tokens from ECR's GetAuthorizationToken,
// signed with the AWS SDK's default credentials: AWS_ACCESS_KEY_ID and
// friends, the shared config files, a web identity, the ECS task role or
// the EC2 instance role. Other registries get Anonymous, so it chains.
//
// Not ecr-login's ECRHelper itself: that one loads the AWS configuration
// anew on every Get (every registry request, here), panics when it can't,
// keeps tokens in a file under $HOME, and reduces every failure to "not
// found". Its rule for when to refresh is kept: at half the token's life.
// ECR Public (public.ecr.aws) is left anonymous, as its pulls may be.
type ecrKeychain struct {
	now func() time.Time

	mu    sync.Mutex
	hosts map[string]*ecrAuth
}

func newECRKeychain(now func() time.Time) *ecrKeychain {
	if now == nil {
		now = time.Now
	}
	return &ecrKeychain{now: now, hosts: map[string]*ecrAuth{}}
}

func (k *ecrKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	host := target.RegistryStr()
	reg, err := api.ExtractRegistry(host)
	if err != nil || reg.Service != api.ServiceECR {
		return authn.Anonymous, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	a, ok := k.hosts[host]
	if !ok {
		// One per registry for the process, so every session and every
		// Credentials call shares its token.
		a = &ecrAuth{host: host, reg: *reg, now: k.now}
		k.hosts[host] = a
	}
	return a, nil
}

// ecrAuth is the credentials for one ECR registry. A session keeps its
// Authenticator and asks it on every request, so a token is replaced
// while the session lives, before it expires.
type ecrAuth struct {
	host string
	reg  api.Registry
	now  func() time.Time

	mu        sync.Mutex // held across a fetch: concurrent lookups wait for one token
	client    *ecr.Client
	user      string
	pass      string
	requested time.Time
	expires   time.Time
}

func (a *ecrAuth) Authorization() (*authn.AuthConfig, error) {
	return a.AuthorizationContext(context.Background())
}

func (a *ecrAuth) AuthorizationContext(ctx context.Context) (*authn.AuthConfig, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if a.pass != "" && now.Before(a.requested.Add(a.expires.Sub(a.requested)/2)) {
		return &authn.AuthConfig{Username: a.user, Password: a.pass}, nil
	}
	err := a.fetch(ctx, now)
	if err != nil && a.pass != "" && now.Before(a.expires) {
		// The token in hand still works; the next request asks again.
		return &authn.AuthConfig{Username: a.user, Password: a.pass}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get an ECR authorization token for %s (account %s, region %s): %w", a.host, a.reg.ID, a.reg.Region, err)
	}
	return &authn.AuthConfig{Username: a.user, Password: a.pass}, nil
}

func (a *ecrAuth) fetch(ctx context.Context, now time.Time) error {
	if a.client == nil {
		opts := []func(*awsconfig.LoadOptions) error{awsconfig.WithRegion(a.reg.Region)}
		if a.reg.FIPS {
			opts = append(opts, awsconfig.WithUseFIPSEndpoint(aws.FIPSEndpointStateEnabled))
		}
		cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
		if err != nil {
			return fmt.Errorf("load the AWS configuration: %w", err)
		}
		a.client = ecr.NewFromConfig(cfg)
	}
	out, err := a.client.GetAuthorizationToken(ctx, &ecr.GetAuthorizationTokenInput{RegistryIds: []string{a.reg.ID}})
	if err != nil {
		return err
	}
	for _, d := range out.AuthorizationData {
		if d.AuthorizationToken == nil {
			continue
		}
		b, err := base64.StdEncoding.DecodeString(*d.AuthorizationToken)
		if err != nil {
			// The decoder's message would quote the token.
			return errors.New("the authorization token is not base64")
		}
		user, pass, ok := strings.Cut(string(b), ":")
		if !ok || user == "" || pass == "" {
			return errors.New("the authorization token is not user:password")
		}
		a.user, a.pass, a.requested = user, pass, now
		a.expires = now.Add(ecrTokenLifetime)
		if d.ExpiresAt != nil {
			a.expires = *d.ExpiresAt
		}
		return nil
	}
	return errors.New("the answer holds no authorization token")
}
