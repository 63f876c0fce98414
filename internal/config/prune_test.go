package config

import (
	"testing"
)

func TestPruneSettings(t *testing.T) {
	const img = "ghcr.io/you/updater:1.4@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name string
		env  env
		want Prune
	}{
		{"off by default", env{}, Prune{Keep: 1}},
		{"off", env{"UPDATER_PRUNE": "off"}, Prune{Keep: 1}},
		{"after deploy", env{"UPDATER_PRUNE": "after-deploy"}, Prune{AfterDeploy: true, Keep: 1}},
		{"any case", env{"UPDATER_PRUNE": "After-Deploy"}, Prune{AfterDeploy: true, Keep: 1}},
		{"keep none", env{"UPDATER_PRUNE": "after-deploy", "UPDATER_PRUNE_KEEP": "0"}, Prune{AfterDeploy: true}},
		{"keep most", env{"UPDATER_PRUNE": "after-deploy", "UPDATER_PRUNE_KEEP": "20"}, Prune{AfterDeploy: true, Keep: 20}},
		{"own image", env{"UPDATER_PRUNE": "after-deploy", "UPDATER_PRUNE_IMAGE": img}, Prune{AfterDeploy: true, Keep: 1, Image: img}},
		{"local image", env{"UPDATER_PRUNE": "after-deploy", "UPDATER_PRUNE_IMAGE": "updater:latest"}, Prune{AfterDeploy: true, Keep: 1, Image: "updater:latest"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.env.load()
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got.Prune != tt.want {
				t.Errorf("got %+v, want %+v", got.Prune, tt.want)
			}
		})
	}
}

func TestPruneSettingsInvalid(t *testing.T) {
	tests := []struct {
		name    string
		env     env
		wantVar string
		want    string // the whole message
	}{
		{"unknown mode", env{"UPDATER_PRUNE": "true"}, "UPDATER_PRUNE",
			`UPDATER_PRUNE="true": unknown prune mode: use "off" or "after-deploy"`},
		{"keep negative", env{"UPDATER_PRUNE": "after-deploy", "UPDATER_PRUNE_KEEP": "-1"}, "UPDATER_PRUNE_KEEP",
			`UPDATER_PRUNE_KEEP="-1": out of range: use a whole number between 0 and 20, like "1" (0 keeps only the current version: a rollback then pulls)`},
		{"keep too many", env{"UPDATER_PRUNE": "after-deploy", "UPDATER_PRUNE_KEEP": "21"}, "UPDATER_PRUNE_KEEP",
			`UPDATER_PRUNE_KEEP="21": out of range: use a whole number between 0 and 20, like "1" (0 keeps only the current version: a rollback then pulls)`},
		{"keep words", env{"UPDATER_PRUNE": "after-deploy", "UPDATER_PRUNE_KEEP": "one"}, "UPDATER_PRUNE_KEEP",
			`UPDATER_PRUNE_KEEP="one": not a whole number: use a whole number between 0 and 20, like "1" (0 keeps only the current version: a rollback then pulls)`},
		{"image not a reference", env{"UPDATER_PRUNE": "after-deploy", "UPDATER_PRUNE_IMAGE": "Updater:Latest!"}, "UPDATER_PRUNE_IMAGE",
			`UPDATER_PRUNE_IMAGE="Updater:Latest!": not an image reference: use the updater's image as the nodes pull it, like ghcr.io/you/updater:1.4@sha256:…, or leave unset for the image the updater runs in`},
		{"keep without pruning", env{"UPDATER_PRUNE_KEEP": "3"}, "UPDATER_PRUNE_KEEP",
			"UPDATER_PRUNE_KEEP is set, but UPDATER_PRUNE is not after-deploy: set UPDATER_PRUNE=after-deploy to prune, or unset UPDATER_PRUNE_KEEP"},
		{"image with pruning off", env{"UPDATER_PRUNE": "off", "UPDATER_PRUNE_IMAGE": "updater:1"}, "UPDATER_PRUNE_IMAGE",
			"UPDATER_PRUNE_IMAGE is set, but UPDATER_PRUNE is not after-deploy: set UPDATER_PRUNE=after-deploy to prune, or unset UPDATER_PRUNE_IMAGE"},
		{"typo", env{"UPDATER_PRUNE_KEPE": "1"}, "UPDATER_PRUNE_KEPE",
			"UPDATER_PRUNE_KEPE is not a known setting; did you mean UPDATER_PRUNE_KEEP?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.env.load()
			errs := errorsOf(t, err)
			if len(errs) != 1 || errs[0].Var != tt.wantVar {
				t.Fatalf("got %v, want one error about %s", err, tt.wantVar)
			}
			if err.Error() != tt.want {
				t.Errorf("got  %s\nwant %s", err, tt.want)
			}
		})
	}
}
