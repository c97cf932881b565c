package server

import (
	"context"
	"testing"

	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// While the daemon opens its device, the socket already answers: health
// NOT_SERVING, GetInfo "starting" with the phase, everything else
// UNAVAILABLE; once Ready, calls reach the service.
func TestStartupGate(t *testing.T) {
	svc := NewService(nil, Options{Version: "v-test"})
	svc.SetPhase("opening the device")
	_, hs := NewGRPCServer(svc, nil, nil)
	ctx := context.Background()
	for _, name := range []string{"", pb.KeyService_ServiceDesc.ServiceName} {
		r, err := hs.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
		if err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("health %q while starting: %v %v", name, r, err)
		}
	}
	gate := startupGate(svc)
	reached := false
	h := func(context.Context, any) (any, error) { reached = true; return &pb.Key{}, nil }
	resp, err := gate(ctx, &pb.GetInfoRequest{}, &grpc.UnaryServerInfo{FullMethod: pb.KeyService_GetInfo_FullMethodName}, h)
	info, _ := resp.(*pb.GetInfoResponse)
	if err != nil || info == nil || info.DeviceState != "starting" || info.StartupPhase != "opening the device" || info.Version != "v-test" {
		t.Fatalf("GetInfo while starting: %v %v", resp, err)
	}
	_, err = gate(ctx, &pb.SignWithLabelRequest{}, &grpc.UnaryServerInfo{FullMethod: pb.KeyService_SignWithLabel_FullMethodName}, h)
	if status.Code(err) != codes.Unavailable || reached {
		t.Fatalf("SignWithLabel while starting: %v (handler reached: %v)", err, reached)
	}
	// Health and reflection are not the KeyService: they pass.
	if _, err := gate(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/grpc.health.v1.Health/Check"}, h); err != nil || !reached {
		t.Fatalf("health call while starting: %v", err)
	}
	reached = false
	svc.Ready(nil)
	if _, err := gate(ctx, &pb.SignWithLabelRequest{}, &grpc.UnaryServerInfo{FullMethod: pb.KeyService_SignWithLabel_FullMethodName}, h); err != nil || !reached {
		t.Fatalf("after Ready: %v, reached %v", err, reached)
	}
}
