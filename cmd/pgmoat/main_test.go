package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/pgmoat/pgmoat/config"
)

const goodConfig = `upstream:
  dsn: postgres://pgmoat_app@127.0.0.1:5432/app
users:
  - name: acme_app
    password: acme-secret
    tenant: acme
`

// clearEnv blanks inherited PGMOAT_* variables (config.Load ignores empty ones).
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "PGMOAT_") {
			t.Setenv(k, "")
		}
	}
}

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pgmoat.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// runCmd executes the root command in-process with args and returns its
// output and error.
func runCmd(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errOut)
	err = root.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

func TestCheckConfig(t *testing.T) {
	clearEnv(t)
	good := writeConfig(t, goodConfig)
	bad := writeConfig(t, goodConfig+"policy:\n  mode: permissive\nbogus: 1\n")

	t.Run("good", func(t *testing.T) {
		stdout, _, err := runCmd(t, "check-config", "--config", good)
		if err != nil {
			t.Fatal(err)
		}
		if stdout != "ok\n" {
			t.Errorf("stdout = %q, want ok", stdout)
		}
	})
	t.Run("bad names the keys", func(t *testing.T) {
		stdout, _, err := runCmd(t, "check-config", "-c", bad)
		if err == nil {
			t.Fatal("check-config accepted a bad file")
		}
		if stdout != "" {
			t.Errorf("stdout = %q, want nothing", stdout)
		}
		// Unknown keys are reported before validation runs.
		if want := "config " + bad + ": bogus: unknown key"; !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	})
	t.Run("flag overrides the file", func(t *testing.T) {
		_, _, err := runCmd(t, "check-config", "-c", good, "--policy-mode", "permissive")
		if err == nil || !strings.Contains(err.Error(), "policy.mode") {
			t.Errorf("err = %v, want one naming policy.mode", err)
		}
	})
	t.Run("exit code and stderr", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		code := execute(context.Background(), []string{"check-config", "--config", writeConfig(t, goodConfig+"policy:\n  mode: permissive\nlog:\n  level: loud\n")}, &stdout, &stderr)
		if code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
		if !strings.Contains(stderr.String(), `policy.mode: must be enforce or audit, not "permissive"`) {
			t.Errorf("stderr = %q", stderr.String())
		}
		for line := range strings.Lines(stderr.String()) {
			if !strings.HasPrefix(line, "pgmoat: config ") {
				t.Errorf("stderr line %q lacks the prefix", line)
			}
		}
		if code := execute(context.Background(), []string{"check-config", "--config", good}, &stdout, &stderr); code != 0 {
			t.Errorf("exit code %d for a good file, want 0", code)
		}
	})
	t.Run("PGMOAT_CONFIG", func(t *testing.T) {
		t.Setenv(configEnv, bad)
		if _, _, err := runCmd(t, "check-config"); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("err = %v, want one naming %s", err, bad)
		}
		// --config wins over the environment.
		if _, _, err := runCmd(t, "check-config", "--config", good); err != nil {
			t.Errorf("--config did not override %s: %v", configEnv, err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "absent.yaml")
		if _, _, err := runCmd(t, "check-config", "--config", missing); err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("err = %v, want one naming %s", err, missing)
		}
	})
}

func TestRunRefusesBadConfig(t *testing.T) {
	clearEnv(t)
	bad := writeConfig(t, "upstream:\n  dsn: postgres://u@localhost/db\nusers:\n  - name: a\n    password: x\n    tenant: \"it's\"\n")
	_, _, err := runCmd(t, "run", "--config", bad)
	if err == nil || !strings.Contains(err.Error(), "users[0].tenant") {
		t.Errorf("err = %v, want one naming users[0].tenant", err)
	}
}

func TestVersion(t *testing.T) {
	defer func(v, c string) { version, commit = v, c }(version, commit)
	version, commit = "v1.2.3", "abc123"
	stdout, _, err := runCmd(t, "version")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"pgmoat v1.2.3", "commit: abc123", runtime.Version()} {
		if !strings.Contains(stdout, want) {
			t.Errorf("version output %q does not contain %q", stdout, want)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"row-level-security", "run", "check-config", "version"}},
		{[]string{"run", "--help"}, []string{"SIGTERM", "SIGINT", "fast shutdown", "--config", "PGMOAT_CONFIG", "--policy-mode"}},
		{[]string{"check-config", "--help"}, []string{`"ok"`, "--config", "status 1"}},
		{[]string{"version", "--help"}, []string{"-ldflags"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			stdout, _, err := runCmd(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(stdout, w) {
					t.Errorf("help does not mention %q:\n%s", w, stdout)
				}
			}
		})
	}
}

func TestNewLogger(t *testing.T) {
	t.Run("json at info drops debug", func(t *testing.T) {
		var buf bytes.Buffer
		logger := newLogger(config.Log{Level: "info", Format: "json"}, &buf)
		logger.Debug("hidden")
		logger.Info("shown", "tenant", "acme")
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if len(lines) != 1 {
			t.Fatalf("got %d lines, want 1: %q", len(lines), buf.String())
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
			t.Fatalf("not JSON: %v", err)
		}
		if rec["msg"] != "shown" || rec["tenant"] != "acme" || rec["level"] != "INFO" {
			t.Errorf("record = %v", rec)
		}
	})
	t.Run("text at debug", func(t *testing.T) {
		var buf bytes.Buffer
		newLogger(config.Log{Level: "debug", Format: "text"}, &buf).Debug("shown", "tenant", "acme")
		if got := buf.String(); !strings.Contains(got, "level=DEBUG msg=shown tenant=acme") {
			t.Errorf("text output = %q", got)
		}
	})
}
