package config

import (
	"slices"
	"testing"
)

func TestNeedsRestart(t *testing.T) {
	for key, want := range map[string]bool{
		"listen":                        true,
		"metrics_listen":                true,
		"upstream.dsn":                  true,
		"upstream.password":             true,
		"tls.cert_file":                 true,
		"policy.tenant_setting":         true,
		"policy.catalog_refresh":        true,
		"log.format":                    true,
		"metrics.tenant_label_cap":      true,
		"users":                         false,
		"policy.mode":                   false,
		"policy.protected":              false,
		"policy.shared":                 false,
		"policy.internal":               false,
		"policy.allow_functions":        false,
		"policy.cache_size":             false,
		"limits.max_client_connections": false,
		"limits.shutdown_timeout":       false,
		"log.level":                     false,
		"limitsx":                       true, // a prefix matches whole key segments only
	} {
		if got := NeedsRestart(key); got != want {
			t.Errorf("NeedsRestart(%q) = %v, want %v", key, got, want)
		}
	}
}

func TestChanges(t *testing.T) {
	clearEnv(t)
	minimal, err := Load("testdata/minimal.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	full, err := Load("testdata/full.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("identical", func(t *testing.T) {
		if got := Changes(minimal, minimal); len(got) != 0 {
			t.Errorf("Changes(c, c) = %q, want none", got)
		}
		empty := *minimal
		empty.Policy.Protected = []string{}
		if got := Changes(minimal, &empty); len(got) != 0 {
			t.Errorf("nil and empty list: Changes = %q, want none", got)
		}
	})

	t.Run("one key", func(t *testing.T) {
		c := *minimal
		c.Limits.AuthTimeout *= 2
		c.Upstream.Password = "secret"
		if got, want := Changes(minimal, &c), []string{"limits.auth_timeout", "upstream.password"}; !slices.Equal(got, want) {
			t.Errorf("Changes = %q, want %q", got, want)
		}
	})

	t.Run("minimal to full", func(t *testing.T) {
		want := []string{
			"limits.auth_timeout", "limits.max_client_connections", "limits.max_message_size", "limits.shutdown_timeout",
			"listen", "log.format", "log.level", "metrics.tenant_label_cap", "metrics_listen",
			"policy.allow_functions", "policy.cache_size", "policy.catalog_refresh", "policy.internal", "policy.mode",
			"policy.protected", "policy.shared", "policy.tenant_setting",
			"upstream.connect_timeout", "upstream.database", "upstream.dsn", "upstream.password",
			"users",
		}
		if got := Changes(minimal, full); !slices.Equal(got, want) {
			t.Errorf("Changes =\n%q\nwant\n%q", got, want)
		}
	})
}

// ApplyReload takes over exactly the changed keys that do not need a restart.
func TestApplyReload(t *testing.T) {
	clearEnv(t)
	minimal, err := Load("testdata/minimal.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	full, err := Load("testdata/full.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		from, to *Config
	}{
		{"minimal to full", minimal, full},
		{"full to minimal", full, minimal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := Changes(tc.from, tc.to)
			got := tc.from.ApplyReload(tc.to)
			var want []string
			for _, k := range before {
				if !NeedsRestart(k) {
					want = append(want, k)
				}
			}
			if applied := Changes(tc.from, got); !slices.Equal(applied, want) {
				t.Errorf("applied %q, want the reloadable changes %q", applied, want)
			}
			if !slices.Equal(Changes(tc.from, tc.to), before) {
				t.Error("ApplyReload modified an argument")
			}
			if err := got.Validate(); err != nil {
				t.Errorf("the result does not validate: %v", err)
			}
		})
	}
}
