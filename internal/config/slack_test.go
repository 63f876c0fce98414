package config

import (
	"slices"
	"strings"
	"testing"
)

const slackAppToken = "xapp-1-A0FAKE-1111-s3cr3tapp"

func TestSlackSocketModeSettings(t *testing.T) {
	bot := env{"SLACK_TOKEN": slackToken, "SLACK_CHANNEL": "#deploys"}
	with := func(extra env) env {
		e := env{}
		for k, v := range bot {
			e[k] = v
		}
		for k, v := range extra {
			e[k] = v
		}
		return e
	}
	tests := []struct {
		name      string
		env       env
		approvers []string
		app       string
	}{
		{"no buttons", bot, nil, ""},
		{"app token and approvers", with(env{"SLACK_APP_TOKEN": slackAppToken, "SLACK_APPROVERS": "U0123ABC"}), []string{"U0123ABC"}, slackAppToken},
		{"app token from a file", with(env{"SLACK_APP_TOKEN_FILE": secretFile(t, slackAppToken+"\n"), "SLACK_APPROVERS": "U0123ABC"}), []string{"U0123ABC"}, slackAppToken},
		{"approvers trimmed, repeats and empties dropped, Grid IDs", with(env{"SLACK_APP_TOKEN": slackAppToken,
			"SLACK_APPROVERS": " U0123ABC, W0456DEF,,U0123ABC "}), []string{"U0123ABC", "W0456DEF"}, slackAppToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.env.load()
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got.Slack.AppToken != tt.app || !slices.Equal(got.Slack.Approvers, tt.approvers) {
				t.Errorf("got app token %q, approvers %q; want %q, %q", got.Slack.AppToken, got.Slack.Approvers, tt.app, tt.approvers)
			}
		})
	}
}

func TestSlackSocketModeSettingsInvalid(t *testing.T) {
	bot := env{"SLACK_TOKEN": slackToken, "SLACK_CHANNEL": "#deploys"}
	with := func(extra env) env {
		e := env{}
		for k, v := range bot {
			e[k] = v
		}
		for k, v := range extra {
			e[k] = v
		}
		return e
	}
	badFile := secretFile(t, "xoxp-s3cr3t\n")
	tests := []struct {
		name    string
		env     env
		wantVar string
		want    string // the whole message
	}{
		{"app token without bot token", env{"SLACK_APP_TOKEN": slackAppToken, "SLACK_APPROVERS": "U0123ABC"}, "SLACK_APP_TOKEN",
			"SLACK_APP_TOKEN is set without SLACK_TOKEN: the buttons sit on the bot's messages; set SLACK_TOKEN (or SLACK_TOKEN_FILE) to the bot token and SLACK_CHANNEL, or unset SLACK_APP_TOKEN"},
		{"not an app token", with(env{"SLACK_APP_TOKEN": "xoxp-s3cr3t", "SLACK_APPROVERS": "U0123ABC"}), "SLACK_APP_TOKEN",
			"SLACK_APP_TOKEN does not look like an app-level token: it starts with xapp- (Basic Information, App-Level Tokens, scope connections:write)"},
		{"not an app token, from a file", with(env{"SLACK_APP_TOKEN_FILE": badFile, "SLACK_APPROVERS": "U0123ABC"}), "SLACK_APP_TOKEN_FILE",
			`SLACK_APP_TOKEN_FILE="` + badFile + `": does not look like an app-level token: it starts with xapp- (Basic Information, App-Level Tokens, scope connections:write)`},
		{"the bot token as the app token", with(env{"SLACK_APP_TOKEN": slackToken, "SLACK_APPROVERS": "U0123ABC"}), "SLACK_APP_TOKEN",
			"SLACK_APP_TOKEN is a bot token: the bot token goes in SLACK_TOKEN; SLACK_APP_TOKEN is the app-level token (xapp-…, scope connections:write)"},
		{"app token with a space", with(env{"SLACK_APP_TOKEN": "xapp-1 s3cr3t", "SLACK_APPROVERS": "U0123ABC"}), "SLACK_APP_TOKEN",
			"SLACK_APP_TOKEN contains whitespace: use the app-level token exactly as Slack shows it (xapp-…)"},
		{"app token without approvers", with(env{"SLACK_APP_TOKEN": slackAppToken}), "SLACK_APPROVERS",
			"SLACK_APPROVERS is not set, but SLACK_APP_TOKEN is: list the Slack user IDs that may press Approve, Reject and Roll back, like U0123ABCD,U0456EFGH (a member's profile, ⋮, Copy member ID)"},
		{"approvers without app token", with(env{"SLACK_APPROVERS": "U0123ABC"}), "SLACK_APPROVERS",
			`SLACK_APPROVERS="U0123ABC": is set without SLACK_APP_TOKEN: approvers press buttons, which need Socket Mode; set SLACK_APP_TOKEN (or SLACK_APP_TOKEN_FILE), or unset SLACK_APPROVERS`},
		{"a name, not an ID", with(env{"SLACK_APP_TOKEN": slackAppToken, "SLACK_APPROVERS": "U0123ABC,@alice"}), "SLACK_APPROVERS",
			`SLACK_APPROVERS="U0123ABC,@alice": "@alice" is not a Slack user ID: use IDs like U0123ABCD (a member's profile, ⋮, Copy member ID), not names`},
		{"a lower-case ID", with(env{"SLACK_APP_TOKEN": slackAppToken, "SLACK_APPROVERS": "u0123abc"}), "SLACK_APPROVERS",
			`SLACK_APPROVERS="u0123abc": "u0123abc" is not a Slack user ID: use IDs like U0123ABCD (a member's profile, ⋮, Copy member ID), not names`},
		{"a channel ID", with(env{"SLACK_APP_TOKEN": slackAppToken, "SLACK_APPROVERS": "C0DEPLOYS"}), "SLACK_APPROVERS",
			`SLACK_APPROVERS="C0DEPLOYS": "C0DEPLOYS" is not a Slack user ID: use IDs like U0123ABCD (a member's profile, ⋮, Copy member ID), not names`},
		{"only commas", with(env{"SLACK_APP_TOKEN": slackAppToken, "SLACK_APPROVERS": ",,"}), "SLACK_APPROVERS",
			`SLACK_APPROVERS=",,": names no user: list Slack user IDs like U0123ABCD,U0456EFGH`},
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
			for _, s := range []string{"s3cr3t", slackToken, slackAppToken} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("message shows a secret (%q): %s", s, err)
				}
			}
		})
	}
}
