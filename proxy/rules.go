package proxy

import (
	"context"
	"strings"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/policy"
)

// PolicyRules turns the policy configuration into the engine's rules.
func PolicyRules(cfg *config.Config) policy.Rules {
	r := policy.Rules{
		TenantSetting:  strings.ToLower(cfg.Policy.TenantSetting),
		Protected:      cfg.Policy.Protected,
		Shared:         map[string]bool{},
		Internal:       cfg.Policy.Internal,
		AllowFunctions: map[string]bool{},
	}
	for _, t := range cfg.Policy.Shared {
		r.Shared[qualify(t.Name)] = t.Writable
	}
	for _, f := range cfg.Policy.AllowFunctions {
		r.AllowFunctions[qualify(f.Name)] = f.Trusted
	}
	return r
}

// LoadEngine reads a catalog snapshot from upstream and builds the policy.
func LoadEngine(ctx context.Context, c *PgConnector, cfg *config.Config) (*policy.Engine, error) {
	conn, err := c.Open(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	cat, err := LoadCatalog(ctx, conn, cfg.Policy.TenantSetting)
	if err != nil {
		return nil, err
	}
	return policy.NewEngine(PolicyRules(cfg), cat, cfg.Policy.CacheSize), nil
}

// qualify makes "table" into "public.table".
func qualify(name string) string {
	if strings.Contains(name, ".") {
		return name
	}
	return "public." + name
}
