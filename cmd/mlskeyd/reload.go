package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/mlskeyd/mlskeyd/audit"
	"github.com/mlskeyd/mlskeyd/server"
)

// reloader applies SIGHUP: the policy is read again from the config file
// (the other settings need a restart) and the audit log is reopened, for
// logrotate. Calls keep running throughout: each sees the old policy or
// the new one, and audit records wait only for the file switch.
type reloader struct {
	args   []string
	getenv func(string) string
	svc    *server.Service
	alog   *audit.Log
	log    *slog.Logger
	notify *notifier
	// auditFailed counts an audit record that could not be written.
	auditFailed func()
}

// catchHUP installs the handler before anything else can take time:
// SIGHUP's default action would kill the daemon. Signals that arrive
// before the daemon serves wait in the channel.
func catchHUP() chan os.Signal {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	return ch
}

func (r *reloader) run(ctx context.Context, hup chan os.Signal) {
	// Once shutdown has begun there is nothing to reload, but SIGHUP's
	// default action must not cut the shutdown short.
	defer signal.Ignore(syscall.SIGHUP)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.notify.reloading()
			r.reload()
			r.notify.ready("serving")
		}
	}
}

func (r *reloader) reload() {
	var errs []error
	policyErr := r.reloadPolicy()
	if policyErr != nil {
		errs = append(errs, fmt.Errorf("policy not changed: %w", policyErr))
	}
	if err := r.alog.Reopen(); err != nil {
		errs = append(errs, err)
	}
	err := errors.Join(errs...)
	rec := audit.Record{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid()),
		Operation: "Reload", Outcome: audit.OutcomeOK, Code: "OK"}
	if err != nil {
		rec.Outcome, rec.Code, rec.Reason = audit.OutcomeError, "FailedPrecondition", err.Error()
		r.log.Error("reload (SIGHUP)", "err", err)
	} else {
		r.log.Info("reloaded (SIGHUP): policy read again, audit log reopened", "audit_log", r.alog.Path())
	}
	if aerr := r.alog.Append(rec); aerr != nil {
		r.log.Error("audit record lost", "operation", rec.Operation, "err", aerr)
		if r.auditFailed != nil {
			r.auditFailed()
		}
	}
}

// reloadPolicy parses the settings as at start-up (flags, environment,
// config file) and gives the service the new policy.
func (r *reloader) reloadPolicy() error {
	cfg := newSettings()
	if err := cfg.parse(r.args, r.getenv, io.Discard); err != nil {
		return err
	}
	p, err := loadPolicy(cfg)
	if err != nil {
		return err
	}
	return r.svc.SetPolicy(p)
}
