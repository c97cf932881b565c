package server

import (
	"context"

	"github.com/mlskeyd/mlskeyd/keystore"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Repair lets an administrator act on what start-up quarantined. The
// daemon never does this on its own: a stray may be another installation's
// key, a missing key may come back with the right token.
func (s *Service) Repair(ctx context.Context, req *pb.RepairRequest) (*pb.RepairResponse, error) {
	c, err := s.callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if !c.admin {
		noteDenied(ctx, "repair: not an admin")
		return nil, status.Errorf(codes.PermissionDenied, "repair: only admins may repair the catalog and the device; uid %d is not one (the daemon's --admin-uids or --admin-gids)", c.UID)
	}
	res, err := s.store.Repair(ctx, keystore.RepairOptions{
		DestroyStrays: req.GetDestroyStrays(),
		RetireMissing: req.GetRetireMissing(),
	})
	if res != nil {
		noteKeys(ctx, res.DestroyedStrays...)
		noteKeys(ctx, res.RetiredMissing...)
	}
	if err != nil {
		return nil, statusOf("repair", err)
	}
	resp := &pb.RepairResponse{DestroyedStrays: res.DestroyedStrays, RetiredMissing: res.RetiredMissing}
	resp.StrayKeyIds, resp.MissingKeyIds, err = s.quarantined()
	if err != nil {
		return nil, statusOf("catalog", err)
	}
	return resp, nil
}

// quarantined returns the stray device objects and the missing keys.
func (s *Service) quarantined() (strays, missing []string, err error) {
	for _, st := range s.store.Strays() {
		strays = append(strays, st.ID)
	}
	missing, err = s.store.Missing()
	return strays, missing, err
}
