package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/policy"
	"github.com/pgmoat/pgmoat/proxy"
)

// runProxy wires pgmoat together and serves until ctx is cancelled.
func runProxy(ctx context.Context, cfg *config.Config, configPath string, logger *slog.Logger) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := proxy.NewMetrics(reg, cfg.Metrics.TenantLabelCap)
	metrics.SetBuildInfo(version)

	connector, err := proxy.NewPgConnector(cfg.Upstream.DSN, cfg.Upstream.Password, cfg.Upstream.ConnectTimeout)
	if err != nil {
		return err
	}
	auth, err := proxy.NewPasswordAuth(cfg.Users)
	if err != nil {
		return fmt.Errorf("users: %w", err)
	}
	database := cfg.Upstream.Database
	if database == "" {
		database = connector.Database()
	}

	pol := &policyHolder{cfg: cfg, connector: connector, log: logger}
	if err := pol.refresh(ctx); err != nil {
		return fmt.Errorf("load the catalog from upstream: %w", err)
	}
	metrics.ObservePolicyCache(func() (uint64, uint64, int) { return pol.engine.Load().CacheStats() })
	go pol.refreshEvery(ctx, cfg.Policy.CatalogRefresh)
	logAudit(ctx, connector, cfg, logger)

	httpLn, err := net.Listen("tcp", cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("metrics_listen: %w", err)
	}
	httpSrv := &http.Server{Handler: proxy.NewHTTPHandler(reg, pol.ready), ReadHeaderTimeout: 10 * time.Second}
	go httpSrv.Serve(httpLn)
	defer httpSrv.Close()

	tlsConfig, err := proxy.LoadTLS(cfg.TLS)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := proxy.NewServer(proxy.Options{
		Config:    cfg,
		Logger:    logger,
		Audit:     logger.With("log", "audit"),
		Metrics:   metrics,
		Auth:      auth,
		Connector: connector,
		Engine:    pol.engine.Load,
		Database:  database,
		TLS:       tlsConfig,
	})
	logger.Info("pgmoat listening", "listen", ln.Addr().String(), "metrics_listen", httpLn.Addr().String(),
		"database", database, "mode", cfg.Policy.Mode, "tls", tlsConfig != nil, "users", len(cfg.Users), "config", configPath)
	err = srv.Serve(ctx, ln)
	logger.Info("pgmoat stopped")
	return err
}

// policyHolder keeps the current policy engine, rebuilt when a periodic
// catalog snapshot differs from the last one. A failed refresh keeps the
// previous engine.
type policyHolder struct {
	cfg       *config.Config
	connector *proxy.PgConnector
	log       *slog.Logger
	engine    atomic.Pointer[policy.Engine]
	lastErr   atomic.Pointer[error]
	cat       *policy.Catalog // the current engine's; only refresh touches it
}

func (p *policyHolder) refresh(ctx context.Context) error {
	err := p.load(ctx)
	if err != nil {
		p.lastErr.Store(&err)
		return err
	}
	p.lastErr.Store(nil)
	return nil
}

func (p *policyHolder) load(ctx context.Context) error {
	conn, err := p.connector.Open(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	cat, err := proxy.LoadCatalog(ctx, conn, p.cfg.Policy.TenantSetting)
	if err != nil {
		return err
	}
	if p.cat != nil && reflect.DeepEqual(cat, p.cat) {
		return nil // keep the engine and its warm decision cache
	}
	e := policy.NewEngine(proxy.PolicyRules(p.cfg), cat, p.cfg.Policy.CacheSize)
	if p.engine.Load() != nil {
		p.log.Info("catalog changed; policy rebuilt", "relations", len(cat.Relations), "functions", len(cat.Functions))
	} else {
		for _, f := range e.Findings() {
			p.log.Warn("policy finding", "finding", f)
		}
	}
	p.cat = cat
	p.engine.Store(e)
	return nil
}

func (p *policyHolder) refreshEvery(ctx context.Context, every time.Duration) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := p.refresh(ctx); err != nil && ctx.Err() == nil {
				p.log.Warn("catalog refresh failed; keeping the previous snapshot", "err", err)
			}
		}
	}
}

// ready is /readyz: the catalog is loaded and the last refresh reached the
// upstream.
func (p *policyHolder) ready() error {
	if p.engine.Load() == nil {
		return errors.New("catalog not loaded")
	}
	if err := p.lastErr.Load(); err != nil {
		return fmt.Errorf("upstream: %w", *err)
	}
	return nil
}
