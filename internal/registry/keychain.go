package registry

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/docker/cli/cli/config"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/google"
)

// defaultKeychain is what a Client uses when Config.Keychain is nil: the
// Docker config file first, then the clouds' own credentials (an ECR host
// with the AWS credentials of the environment, instance or task role; a
// GCR or Artifact Registry host with Google's Application Default
// Credentials), all in this process. The updater's image is FROM scratch,
// so a docker-credential-* program named in config.json is never there to
// run; the helpers users name most are served here instead. now is the
// clock token lifetimes are judged by.
func defaultKeychain(now func() time.Time) authn.Keychain {
	ecr := newECRKeychain(now)
	gcp := backgroundKeychain{google.Keychain}
	return authn.NewMultiKeychain(
		dockerConfig{
			builtin: map[string]authn.Keychain{
				"ecr-login": ecr, // amazon-ecr-credential-helper
				"gcloud":    gcp, // what `gcloud auth configure-docker` writes
				"gcr":       gcp, // docker-credential-gcr
			},
			lookPath: exec.LookPath,
		},
		ecr,
		gcp,
	)
}

// backgroundKeychain hides its keychain's ResolveContext. google.Keychain
// resolves its token source once, with the context of the first call, and
// refreshes tokens with it later: bound to one Digest's deadline it would
// fail every refresh after that Digest returned.
type backgroundKeychain struct{ kc authn.Keychain }

func (b backgroundKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	return b.kc.Resolve(r)
}

// dockerConfig is authn.DefaultKeychain, except for a credential helper
// (credHelpers for the registry, else credsStore): one served in-process
// is asked directly; one that is neither served nor on PATH is an error
// that says so, instead of an exec failure or, worse, anonymous pulls.
type dockerConfig struct {
	builtin  map[string]authn.Keychain // helper name (docker-credential-NAME) => keychain
	lookPath func(string) (string, error)
}

func (k dockerConfig) Resolve(target authn.Resource) (authn.Authenticator, error) {
	return k.ResolveContext(context.Background(), target)
}

func (k dockerConfig) ResolveContext(ctx context.Context, target authn.Resource) (authn.Authenticator, error) {
	// The same file authn.DefaultKeychain reads: this call is its own.
	cf, err := config.Load(os.Getenv("DOCKER_CONFIG"))
	if err != nil {
		return nil, fmt.Errorf("read the Docker config file: %w", err)
	}
	host := target.RegistryStr()
	key := host
	if key == name.DefaultRegistry {
		key = authn.DefaultAuthKey
	}
	helper, field := cf.CredentialHelpers[key], "credHelpers"
	if helper == "" {
		helper, field = cf.CredentialsStore, "credsStore"
	}
	if helper == "" {
		return authn.Resolve(ctx, authn.DefaultKeychain, target)
	}
	if kc, ok := k.builtin[helper]; ok {
		auth, err := authn.Resolve(ctx, kc, target)
		if err != nil {
			return nil, fmt.Errorf("credential helper %q for %s: %w", helper, host, err)
		}
		if auth == authn.Anonymous && field == "credHelpers" {
			// Named for this registry, the helper was meant to answer.
			return nil, fmt.Errorf("config.json (credHelpers) names credential helper %q for %s, which found no credentials for it "+
				"in this process (%s)", helper, host, k.sources(helper))
		}
		return auth, nil
	}
	if _, err := k.lookPath("docker-credential-" + helper); err == nil {
		// An image built with the helper in it: Docker's own code runs it.
		return authn.Resolve(ctx, authn.DefaultKeychain, target)
	}
	if _, stored := cf.AuthConfigs[key]; field == "credsStore" && !stored {
		// `docker login` leaves an empty entry under auths for what it put
		// in the store, so the store holds nothing for this registry.
		return authn.Anonymous, nil
	}
	return nil, fmt.Errorf("config.json (%s) names credential helper %q for %s, but docker-credential-%s is not on PATH "+
		"and the updater serves only %s in-process: put the credentials under \"auths\" instead "+
		"(run `docker --config DIR login %s` where no credsStore is set and mount DIR/config.json), "+
		"or run an image that contains the helper", field, helper, host, helper, k.served(), host)
}

func (k dockerConfig) served() string {
	var names []string
	for n := range k.builtin {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func (k dockerConfig) sources(helper string) string {
	switch helper {
	case "gcloud", "gcr":
		return "Google Application Default Credentials: a service account key file named by GOOGLE_APPLICATION_CREDENTIALS, " +
			"or the metadata server of a Google Cloud machine; the gcloud program is not in the image"
	}
	return "is it a registry of that cloud?"
}
