// Command pgmoat is a PostgreSQL wire-protocol proxy that enforces tenant
// isolation with row-level security. See `pgmoat --help`.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/proxy"
)

// Set at build time:
//
//	go build -ldflags "-X main.version=v0.3.0 -X main.commit=$(git rev-parse HEAD)" ./cmd/pgmoat
var (
	version = "dev"
	commit  = "" // empty: taken from the Go build info (vcs.revision) if present
)

// configEnv names the config file when --config is not given.
const configEnv = "PGMOAT_CONFIG"

func main() {
	os.Exit(execute(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// execute runs the command line args and returns the process exit code:
// 0 on success, 1 on any error (printed to stderr).
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		// A config error lists one problem per line; prefix each.
		for line := range strings.Lines(err.Error()) {
			fmt.Fprint(stderr, "pgmoat: ", strings.TrimSuffix(line, "\n"), "\n")
		}
		return 1
	}
	return 0
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "pgmoat",
		Short: "A PostgreSQL proxy that keeps every tenant inside its own rows",
		Long: `pgmoat is a transparent PostgreSQL wire-protocol proxy that enforces tenant
isolation. Applications connect to pgmoat exactly as they would connect to
PostgreSQL. pgmoat authenticates each connection to one tenant (the users list
in the config file maps logins to tenants), makes every transaction run with

    SET LOCAL app.current_tenant_id = '<tenant>'

so that the database's row-level-security (RLS) policies apply, and parses
every statement so that nothing can reach a table RLS does not protect or
change the tenant setting. Blocked statements get an ordinary PostgreSQL error
(SQLSTATE 42501) and the connection stays usable.

pgmoat connects upstream with its own role, which must not be a superuser,
must not own the tenant tables and must not have BYPASSRLS. Run it as a
sidecar next to each application instance; watch it through the Prometheus
metrics and health endpoints on metrics_listen and the JSON audit log on
standard error.

Configuration comes from one YAML file (see deploy/pgmoat.example.yaml for
every key), overridden by PGMOAT_* environment variables and then by flags.`,
		Example: `  pgmoat check-config --config /etc/pgmoat/pgmoat.yaml
  pgmoat run --config /etc/pgmoat/pgmoat.yaml
  PGMOAT_POLICY_MODE=audit pgmoat run -c pgmoat.yaml`,
		// Errors are printed once, by execute; a config error is not a
		// usage error, so do not print the usage for it.
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.AddCommand(newRunCmd(), newCheckCmd(), newCheckConfigCmd(), newExplainCmd(), newVersionCmd())
	return root
}

func newRunCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the proxy",
		Long: `Run loads and validates the configuration, then accepts client connections on
listen and serves /metrics, /healthz and /readyz on metrics_listen, until it
receives SIGINT or SIGTERM.

On SIGTERM (a graceful shutdown) pgmoat stops accepting connections, closes
each session at its next transaction boundary and lets open transactions
finish for up to limits.shutdown_timeout, then closes the rest. On SIGINT (a
fast shutdown, like PostgreSQL's) it stops accepting and closes every session
at once: open transactions roll back and running statements are cancelled.
Either way clients get FATAL 57P01 (admin_shutdown), or 57P03
(cannot_connect_now) if they were still logging in. A second signal during a
graceful shutdown makes it fast; one more ends the process at once.

If the configuration is invalid, run prints every problem, each naming the
file and the key, and exits with status 1 without starting.

Logs (including the audit log) go to standard error, in the format and at the
level set by log.format and log.level.

On SIGHUP, and when the content of the config file changes (checked every 2
seconds), pgmoat reloads the configuration without dropping connections:
users and their tenants, the policy (mode, protected, shared,
allow_functions, cache_size), limits and log.level. New sessions use the new
configuration; open sessions follow the new policy from their next statement.
A session whose user was removed, or whose tenant, read_only, admin flag or
credentials changed, is closed at its next transaction boundary with SQLSTATE
57P01. A configuration that fails validation is refused, logged and counted
(pgmoat_config_reloads_total{result="failure"}); the running one stays. Keys
that need a restart (listen, metrics_listen, upstream.*, tls.*,
policy.tenant_setting, policy.catalog_refresh, log.format, metrics.*) are not
applied; the log names them. Password files are re-read on SIGHUP only (or
when the config file itself changes).`,
		Example: `  pgmoat run --config /etc/pgmoat/pgmoat.yaml
  pgmoat run -c pgmoat.yaml --policy-mode audit --log-format text
  PGMOAT_CONFIG=/etc/pgmoat/pgmoat.yaml PGMOAT_UPSTREAM_PASSWORD=... pgmoat run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := configPath(cmd)
			cfg, err := config.Load(path, cmd.Flags())
			if err != nil {
				return err
			}
			level := new(slog.LevelVar) // log.level can change on reload
			level.Set(cfg.Log.SlogLevel())
			logger := newLeveledLogger(cfg.Log.Format, level, cmd.ErrOrStderr())

			// SIGHUP reloads the configuration. Subscribe before anything
			// else: by default the signal would kill the process.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			ctx, hurry, stop := shutdownContext(cmd.Context(), logger)
			defer stop()

			logger.Info("pgmoat starting", "version", version, "commit", buildCommit())
			return runProxy(ctx, hurry, cfg, logger, reloadSource{
				path: path, flags: cmd.Flags(), level: level, hup: hup, pollEvery: configPollInterval,
			})
		},
	}
	addConfigFlags(cmd.Flags())
	return cmd
}

// shutdownContext returns a context that SIGTERM cancels for a graceful
// shutdown and SIGINT for a fast one (its cause is proxy.ErrFastShutdown),
// and a channel closed when a second signal follows SIGTERM: the graceful
// shutdown under way is to end fast (proxy.Server.Hurry). Once a fast
// shutdown has been asked for, the default handling is restored, so that
// one more signal kills a shutdown that hangs. stop releases the signals.
func shutdownContext(parent context.Context, logger *slog.Logger) (ctx context.Context, hurry <-chan struct{}, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	hurried := make(chan struct{})
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer signal.Stop(sigs) // from now on a signal kills
		var sig os.Signal
		select {
		case sig = <-sigs:
		case <-ctx.Done():
			return
		}
		if sig == os.Interrupt {
			logger.Info("shutting down", "signal", sig.String(), "fast", true)
			cancel(fmt.Errorf("received %v: %w", sig, proxy.ErrFastShutdown))
			return
		}
		logger.Info("shutting down", "signal", sig.String(), "fast", false)
		cancel(fmt.Errorf("received %v", sig))
		select {
		case sig = <-sigs:
			logger.Info("shutting down fast", "signal", sig.String())
			close(hurried)
		case <-quit:
		}
	}()
	return ctx, hurried, func() {
		close(quit)
		cancel(nil)
		<-done
	}
}

func newCheckConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check-config",
		Short: "Load and validate the configuration, then exit",
		Long: `check-config loads the configuration exactly as run would (file, PGMOAT_*
environment variables, flags), reads the password files and validates
everything. It prints "ok" and exits with status 0 if the configuration is
valid; otherwise it prints every problem, each naming the file and the key,
and exits with status 1. It does not connect to PostgreSQL.

Use it in CI and before a reload.`,
		Example: `  pgmoat check-config --config /etc/pgmoat/pgmoat.yaml
  PGMOAT_CONFIG=pgmoat.yaml pgmoat check-config`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := config.Load(configPath(cmd), cmd.Flags()); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "ok")
			return nil
		},
	}
	addConfigFlags(cmd.Flags())
	return cmd
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and Go version",
		Long: `version prints pgmoat's version and the commit it was built from (set at build
time with -ldflags "-X main.version=... -X main.commit=..."), and the Go
version and platform it was built with.`,
		Args: cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "pgmoat %s\ncommit: %s\ngo: %s %s/%s\n",
				version, buildCommit(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		},
	}
}

// addConfigFlags defines --config and the flags that override configuration
// keys. A flag overrides its key only when given on the command line; the
// names follow config.Load's rule (key with "." and "_" replaced by "-").
func addConfigFlags(fs *pflag.FlagSet) {
	fs.StringP("config", "c", "pgmoat.yaml", "the configuration file (env "+configEnv+")")
	fs.String("listen", "", "override listen: the client address, host:port")
	fs.String("metrics-listen", "", "override metrics_listen: the /metrics, /healthz, /readyz address, host:port")
	fs.String("policy-mode", "", "override policy.mode: enforce or audit")
	fs.String("log-level", "", "override log.level: debug, info, warn or error")
	fs.String("log-format", "", "override log.format: json or text")
}

// configPath is --config if given, else $PGMOAT_CONFIG if set, else the
// flag's default (pgmoat.yaml).
func configPath(cmd *cobra.Command) string {
	f := cmd.Flags().Lookup("config")
	if !f.Changed {
		if p := os.Getenv(configEnv); p != "" {
			return p
		}
	}
	return f.Value.String()
}

// newLogger builds the process logger (the audit log is proxy.AuditLog): JSON or
// text lines written to w at the configured level.
func newLogger(cfg config.Log, w io.Writer) *slog.Logger {
	return newLeveledLogger(cfg.Format, cfg.SlogLevel(), w)
}

// newLeveledLogger is newLogger with the level given as a slog.Leveler, so
// that a *slog.LevelVar can change it later.
func newLeveledLogger(format string, level slog.Leveler, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// buildCommit is the commit set with -ldflags, else the VCS revision Go
// recorded in the binary, else "unknown".
func buildCommit() string {
	if commit != "" {
		return commit
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}
