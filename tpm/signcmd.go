package tpm

import (
	"encoding/binary"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// signPW runs TPM2_Sign (ECDSA, hash check TPM_RH_NULL) under a password
// session with an empty password, marshalled by hand. go-tpm's reflection
// over the command and the response took about 150 µs of CPU per signature
// while the TPM queue was held, which every other caller waited out; the
// command is fixed in shape, so it is written and read here directly. A
// key with a revocation bit signs through go-tpm (its policy session).
// Runs with the queue held; returns r and s as the TPM gave them.
func signPW(t interface {
	Send([]byte) ([]byte, error)
}, key tpm2.TPMHandle, digest []byte, hash tpm2.TPMIAlgHash) (r, s []byte, err error) {
	cmd := make([]byte, 0, 10+4+4+9+2+len(digest)+4+8)
	cmd = binary.BigEndian.AppendUint16(cmd, uint16(tpm2.TPMSTSessions))
	cmd = binary.BigEndian.AppendUint32(cmd, 0) // size, below
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMCCSign))
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(key))
	cmd = binary.BigEndian.AppendUint32(cmd, 9) // authorizationSize
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMRSPW))
	// Empty nonce, continueSession (as go-tpm sends it), empty password.
	cmd = append(cmd, 0, 0, 1, 0, 0)
	cmd = binary.BigEndian.AppendUint16(cmd, uint16(len(digest)))
	cmd = append(cmd, digest...)
	cmd = binary.BigEndian.AppendUint16(cmd, uint16(tpm2.TPMAlgECDSA))
	cmd = binary.BigEndian.AppendUint16(cmd, uint16(hash))
	cmd = binary.BigEndian.AppendUint16(cmd, uint16(tpm2.TPMSTHashCheck))
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(tpm2.TPMRHNull))
	cmd = binary.BigEndian.AppendUint16(cmd, 0) // empty ticket digest
	binary.BigEndian.PutUint32(cmd[2:6], uint32(len(cmd)))
	rsp, err := t.Send(cmd)
	if err != nil {
		return nil, nil, err
	}
	return parseSignResponse(rsp, hash)
}

// parseSignResponse reads TPM2_Sign's response: header, parameter size,
// TPMT_SIGNATURE (ECDSA with the hash asked for), then the password
// session's acknowledgement. A response code other than success is
// returned as the tpm2.TPMRC error go-tpm would give.
func parseSignResponse(rsp []byte, hash tpm2.TPMIAlgHash) (r, s []byte, err error) {
	if len(rsp) < 10 {
		return nil, nil, fmt.Errorf("TPM2_Sign: short response (%d bytes)", len(rsp))
	}
	if size := binary.BigEndian.Uint32(rsp[2:6]); size != uint32(len(rsp)) {
		return nil, nil, fmt.Errorf("TPM2_Sign: response says %d bytes, has %d", size, len(rsp))
	}
	if rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])); rc != tpm2.TPMRCSuccess {
		return nil, nil, rc
	}
	if tag := tpm2.TPMST(binary.BigEndian.Uint16(rsp[0:2])); tag != tpm2.TPMSTSessions {
		return nil, nil, fmt.Errorf("TPM2_Sign: response tag 0x%04x without sessions", uint16(tag))
	}
	p := rsp[10:]
	if len(p) < 4 {
		return nil, nil, fmt.Errorf("TPM2_Sign: truncated parameter size")
	}
	n := binary.BigEndian.Uint32(p)
	p = p[4:]
	if uint64(n) > uint64(len(p)) {
		return nil, nil, fmt.Errorf("TPM2_Sign: parameters of %d bytes, %d left", n, len(p))
	}
	parms := p[:n]
	if len(parms) < 4 {
		return nil, nil, fmt.Errorf("TPM2_Sign: truncated signature")
	}
	if alg := tpm2.TPMIAlgSigScheme(binary.BigEndian.Uint16(parms)); alg != tpm2.TPMAlgECDSA {
		return nil, nil, fmt.Errorf("TPM2_Sign: signature algorithm 0x%04x, want ECDSA", uint16(alg))
	}
	if h := tpm2.TPMIAlgHash(binary.BigEndian.Uint16(parms[2:])); h != hash {
		return nil, nil, fmt.Errorf("TPM2_Sign: signature hash 0x%04x, want 0x%04x", uint16(h), uint16(hash))
	}
	rest := parms[4:]
	if r, rest, err = cut2BField(rest, "signatureR"); err != nil {
		return nil, nil, err
	}
	if s, rest, err = cut2BField(rest, "signatureS"); err != nil {
		return nil, nil, err
	}
	if len(rest) != 0 {
		return nil, nil, fmt.Errorf("TPM2_Sign: %d bytes after the signature", len(rest))
	}
	return r, s, nil
}

func cut2BField(b []byte, name string) (v, rest []byte, err error) {
	if len(b) < 2 {
		return nil, nil, fmt.Errorf("TPM2_Sign: truncated %s", name)
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n {
		return nil, nil, fmt.Errorf("TPM2_Sign: %s of %d bytes, %d left", name, n, len(b)-2)
	}
	return b[2 : 2+n], b[2+n:], nil
}
