package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

// maxAuditPage is the largest page the server answers.
const maxAuditPage = 1000

func (a *app) newAuditCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "audit",
		Short: "Read and verify the hash-chained audit log",
		RunE:  cli.GroupRunE,
	}
	c.AddCommand(a.newAuditListCmd(), a.newAuditVerifyCmd())
	return c
}

func (a *app) newAuditListCmd() *cobra.Command {
	var (
		out   cli.OutputFlags
		limit int
		after int64
	)
	c := &cobra.Command{
		Use:     "list [--limit N] [--after SEQ]",
		Aliases: []string{"ls"},
		Short:   "List audit records: who did what, when, with what result",
		Long: `list prints the newest --limit records, oldest first. With --after it prints
up to --limit records following sequence number SEQ instead, to page through
the whole log.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if limit < 1 || limit > maxAuditPage {
				return cli.Usagef("--limit must be in 1..%d", maxAuditPage)
			}
			if after < 0 {
				return cli.Usagef("--after must not be negative")
			}
			s, err := a.connect(c)
			if err != nil {
				return err
			}
			defer s.client.CloseIdleConnections()
			ctx, cancel := a.ctx(c)
			defer cancel()
			if !c.Flags().Changed("after") {
				head, err := s.client.ListAudit(ctx, 0, 1)
				if err != nil {
					return s.explain(err)
				}
				after = max(0, head.HeadSeq-int64(limit))
			}
			resp, err := s.client.ListAudit(ctx, after, limit)
			if err != nil {
				return s.explain(err)
			}
			recs := resp.Records
			if recs == nil {
				recs = []cpapi.AuditRecord{}
			}
			return cli.Print(c.OutOrStdout(), format, recs, func(w io.Writer) error {
				if len(recs) == 0 {
					_, err := fmt.Fprintln(w, "No audit records.")
					return err
				}
				tw := cli.NewTable(w)
				fmt.Fprintln(tw, "SEQ\tTIME\tACTOR\tACTION\tTARGET\tRESULT")
				for _, r := range recs {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.Seq, r.Time.Local().Format(time.RFC3339), r.Actor, r.Action, dash(r.Target), r.Result)
				}
				return tw.Flush()
			})
		},
	}
	out.Register(c)
	c.Flags().IntVarP(&limit, "limit", "n", 50, "number of records")
	c.Flags().Int64Var(&after, "after", 0, "list records after this sequence number")
	return c
}

// errAuditBroken is returned by 'audit verify' when the chain does not
// verify, so that the command exits with status 1.
var errAuditBroken = errors.New("audit log does NOT verify")

func (a *app) newAuditVerifyCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   "verify",
		Short: "Check the audit chain on the server; exit 1 if a record was edited, removed or reordered",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			v, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.AuditVerification, error) {
				return cl.VerifyAudit(ctx)
			})
			if err != nil {
				return err
			}
			err = cli.Print(c.OutOrStdout(), format, v, func(w io.Writer) error {
				if v.OK {
					_, err := fmt.Fprintf(w, "Audit log OK: %d records, head seq %d, hash %s\n", v.Records, v.HeadSeq, v.HeadHash)
					return err
				}
				return nil
			})
			if err != nil {
				return err
			}
			if !v.OK {
				where := "at the head of the chain"
				if v.BadSeq > 0 {
					where = fmt.Sprintf("at record %d", v.BadSeq)
				}
				return fmt.Errorf("%w: broken %s: %s (%d records checked, recorded head seq %d)", errAuditBroken, where, v.Problem, v.Records, v.HeadSeq)
			}
			return nil
		},
	}
	out.Register(c)
	return c
}
