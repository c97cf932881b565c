package server

import (
	"github.com/mlskeyd/mlskeyd/keystore"
	"github.com/mlskeyd/mlskeyd/mls"
	pb "github.com/mlskeyd/mlskeyd/proto/mlskey/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var roleToPB = map[keystore.Role]pb.KeyRole{
	keystore.RoleSignature:      pb.KeyRole_KEY_ROLE_SIGNATURE,
	keystore.RoleInit:           pb.KeyRole_KEY_ROLE_INIT,
	keystore.RoleLeafEncryption: pb.KeyRole_KEY_ROLE_LEAF_ENCRYPTION,
}

var stateToPB = map[keystore.State]pb.KeyState{
	keystore.StateActive:    pb.KeyState_KEY_STATE_ACTIVE,
	keystore.StateConsumed:  pb.KeyState_KEY_STATE_CONSUMED,
	keystore.StateDestroyed: pb.KeyState_KEY_STATE_DESTROYED,
	keystore.StateMissing:   pb.KeyState_KEY_STATE_MISSING,
}

var protectionToPB = map[keystore.Protection]pb.Protection{
	keystore.ProtectionHardware: pb.Protection_PROTECTION_HARDWARE,
	keystore.ProtectionWrapped:  pb.Protection_PROTECTION_WRAPPED,
	keystore.ProtectionSealed:   pb.Protection_PROTECTION_SEALED,
}

func reverse[K, V comparable](m map[K]V) map[V]K {
	out := make(map[V]K, len(m))
	for k, v := range m {
		out[v] = k
	}
	return out
}

var (
	roleFromPB  = reverse(roleToPB)
	stateFromPB = reverse(stateToPB)
)

func keyToPB(r *keystore.Record) *pb.Key {
	k := &pb.Key{
		Id:             r.ID,
		CipherSuite:    uint32(r.Suite),
		Role:           roleToPB[r.Role],
		PublicKey:      r.PublicKey,
		Protection:     protectionToPB[r.Protection],
		State:          stateToPB[r.State],
		KeyPackageRef:  r.KeyPackageRef,
		LastResort:     r.LastResort,
		SignatureKeyId: r.SignatureKeyID,
		Owner:          r.Owner,
		CreatedAt:      timestamppb.New(r.CreatedAt),
	}
	if !r.RetiredAt.IsZero() {
		k.RetiredAt = timestamppb.New(r.RetiredAt)
	}
	return k
}

func groupSecretsToPB(gs *mls.GroupSecrets) *pb.GroupSecrets {
	out := &pb.GroupSecrets{JoinerSecret: gs.JoinerSecret, PathSecret: gs.PathSecret}
	for _, p := range gs.PSKs {
		out.Psks = append(out.Psks, &pb.PreSharedKeyID{
			PskType:         uint32(p.PSKType),
			PskId:           p.PSKID,
			ResumptionUsage: uint32(p.Usage),
			PskGroupId:      p.PSKGroupID,
			PskEpoch:        p.PSKEpoch,
			PskNonce:        p.Nonce,
		})
	}
	return out
}
