package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"signet.dev/keys"
	"signet.dev/server"
)

func init() { commands = append(commands, newServeCmd) }

func newServeCmd() *cobra.Command {
	var config, level, listen string
	cmd := &cobra.Command{
		Use:   "serve --config=FILE",
		Short: "Run the signing service (HTTP JSON API; see docs/server.md)",
		Long: `Run the signing service: keys on PKCS#11 tokens or in PEM files, clients
authenticated by TLS client certificate or bearer token, every item checked
by kind and policy, approvals, an audit log with signed checkpoints, and a
SQLite (single node) or PostgreSQL (replicas) queue. SIGTERM or SIGINT stops
it after the signatures in flight are stored.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if config == "" {
				return fmt.Errorf("no --config= given")
			}
			var lv slog.Level
			if err := lv.UnmarshalText([]byte(level)); err != nil {
				return fmt.Errorf("--log-level=%s: %w", level, err)
			}
			log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lv, ReplaceAttr: redactAttr}))
			cfg, err := server.LoadConfig(config)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			s, err := server.New(ctx, cfg, log)
			if err != nil {
				return err
			}
			defer s.Close()
			if listen != "" {
				cfg.Listen = listen
			}
			l, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return err
			}
			return s.Serve(ctx, l)
		},
	}
	cmd.Flags().StringVar(&config, "config", "", "service configuration (TOML)")
	cmd.Flags().StringVar(&level, "log-level", "info", "log level: debug, info, warn, error")
	cmd.Flags().StringVar(&listen, "listen", "", "address to listen on, instead of the configuration's listen")
	return cmd
}

// redactAttr keeps PINs out of the service log: every string or error
// value logged passes through keys.RedactText.
func redactAttr(_ []string, a slog.Attr) slog.Attr {
	switch v := a.Value.Any().(type) {
	case string:
		a.Value = slog.StringValue(keys.RedactText(v))
	case error:
		a.Value = slog.StringValue(keys.RedactText(v.Error()))
	}
	return a
}
