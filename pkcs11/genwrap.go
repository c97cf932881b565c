package pkcs11

/*
#include <stdlib.h>
#include <string.h>

// The PKCS#11 types needed here, as the standard's headers define them on
// Unix (natural alignment, no packing); named apart from attrs.go's.
typedef unsigned long gwULong;
typedef struct { gwULong type; void *pValue; gwULong ulValueLen; } gwAttribute;
typedef struct { gwULong mechanism; void *pParameter; gwULong ulParameterLen; } gwMechanism;
typedef gwULong (*gwGenerateKeyPairFn)(gwULong, gwMechanism *, gwAttribute *, gwULong, gwAttribute *, gwULong, gwULong *, gwULong *);
typedef gwULong (*gwGetAttributeValueFn)(gwULong, gwULong, gwAttribute *, gwULong);
typedef gwULong (*gwWrapKeyFn)(gwULong, gwMechanism *, gwULong, gwULong, unsigned char *, gwULong *);
typedef gwULong (*gwDestroyObjectFn)(gwULong, gwULong);

// Places in CK_FUNCTION_LIST after the version (PKCS#11 2.40 order).
enum {
	gwDestroyObjectIndex = 22,
	gwGetAttributeValueIndex = 24,
	gwGenerateKeyPairIndex = 59,
	gwWrapKeyIndex = 60,
};

enum { gwCKR_OK = 0, gwCKR_BUFFER_TOO_SMALL = 0x150 };
enum { gwCKA_EC_POINT = 0x181, gwCKM_AES_KEY_WRAP_PAD = 0x210a };

// The step a genWrap stopped at.
enum { gwDone = 0, gwGenerate = 1, gwPoint = 2, gwWrap = 3 };

// gwCall is one genWrap: inputs, buffers and results in one block of C
// memory, so that no Go pointer crosses.
typedef struct {
	gwULong session, genMech, wrapKey;
	gwAttribute *pub, *priv;
	gwULong nPub, nPriv;
	int keep; // leave both objects (tests wrap them again)
	unsigned char *point;
	gwULong pointLen; // capacity in, length out
	unsigned char *wrapped;
	gwULong wrappedLen; // capacity in, length out
	gwULong pubH, privH;
	int stage;  // where it stopped: gwDone, or the failed step
	gwULong rv; // the failed step's code
	gwULong destroyRv; // the first failed C_DestroyObject's
} gwCall;

static void gwDestroy(void **fns, gwCall *c) {
	gwDestroyObjectFn destroy = (gwDestroyObjectFn)fns[gwDestroyObjectIndex];
	gwULong hs[2] = { c->privH, c->pubH };
	for (int i = 0; i < 2; i++) {
		gwULong rv = destroy(c->session, hs[i]);
		if (rv != gwCKR_OK && c->destroyRv == gwCKR_OK) {
			c->destroyRv = rv;
		}
	}
}

// genWrap generates a key pair, reads its public point and wraps its
// private half, each in one call with buffers sized beforehand, and
// destroys both objects. When a buffer is too small it stops there with
// the objects alive, for the caller to go on the ordinary way.
static void genWrap(void **fns, gwCall *c) {
	gwMechanism gen = { c->genMech, NULL, 0 };
	c->stage = gwGenerate;
	c->rv = ((gwGenerateKeyPairFn)fns[gwGenerateKeyPairIndex])(c->session, &gen,
		c->pub, c->nPub, c->priv, c->nPriv, &c->pubH, &c->privH);
	if (c->rv != gwCKR_OK) {
		return;
	}
	gwAttribute point = { gwCKA_EC_POINT, c->point, c->pointLen };
	c->stage = gwPoint;
	c->rv = ((gwGetAttributeValueFn)fns[gwGetAttributeValueIndex])(c->session, c->pubH, &point, 1);
	if (c->rv == gwCKR_BUFFER_TOO_SMALL) {
		return;
	}
	if (c->rv == gwCKR_OK && point.ulValueLen > c->pointLen) {
		c->rv = gwCKR_BUFFER_TOO_SMALL; // CK_UNAVAILABLE_INFORMATION
		return;
	}
	if (c->rv == gwCKR_OK) {
		c->pointLen = point.ulValueLen;
		gwULong room = c->wrappedLen;
		gwMechanism kwp = { gwCKM_AES_KEY_WRAP_PAD, NULL, 0 };
		c->stage = gwWrap;
		c->rv = ((gwWrapKeyFn)fns[gwWrapKeyIndex])(c->session, &kwp, c->wrapKey, c->privH, c->wrapped, &c->wrappedLen);
		if (c->rv == gwCKR_OK && c->wrappedLen > room) {
			c->rv = gwCKR_BUFFER_TOO_SMALL;
		}
		if (c->rv == gwCKR_BUFFER_TOO_SMALL) {
			return;
		}
		if (c->rv == gwCKR_OK) {
			c->stage = gwDone;
		}
	}
	if (!c->keep) {
		gwDestroy(fns, c);
	}
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	p11 "github.com/miekg/pkcs11"
)

// Room for CKA_EC_POINT (a DER OCTET STRING of an uncompressed point: 137
// bytes on P-521) and for the AES-KWP output (the PKCS#8 encoding of the
// private key, padded to 8 bytes, and 8 more: about 250 bytes on P-521).
// A module that needs more answers CKR_BUFFER_TOO_SMALL, and the step is
// made the ordinary way. Variables for the tests of that fallback.
var (
	genWrapPointCap = 256
	genWrapBlobCap  = 1024
)

// genWrapResult is what one direct genWrap did.
type genWrapResult struct {
	// generated: the key pair was made (pubH, privH); destroyed: and is
	// gone again (never with keep).
	generated, destroyed bool
	pubH, privH          p11.ObjectHandle
	point, wrapped       []byte // nil if not read / not wrapped
	// err is the failed step's error, phrased as the ordinary path
	// phrases it; destroyErr the first failure of C_DestroyObject.
	err, destroyErr error
}

// genWrapDirect makes a wrappable key pair on session s, reads its point
// and wraps its private half under wh with CKM_AES_KEY_WRAP_PAD, in one
// cgo call and one C_WrapKey (miekg/pkcs11 calls C_WrapKey and
// C_GetAttributeValue twice each, the first time for the length; SoftHSM
// does the whole PKCS#8 encoding and wrap both times). ok is false when
// the module's functions cannot be called directly (p11-kit): nothing was
// done, the caller goes the ordinary way.
func (b *Backend) genWrapDirect(s p11.SessionHandle, mech uint, wh p11.ObjectHandle, pub, priv []*p11.Attribute, keep bool) (res genWrapResult, ok bool) {
	fns := moduleFns(b.mod.path, b.forwarded)
	if fns == nil {
		return res, false
	}
	// One block: the call, both templates, their values, and the buffers.
	var ca C.gwCall
	attrSize := int(unsafe.Sizeof(C.gwAttribute{}))
	size := int(unsafe.Sizeof(ca)) + (len(pub)+len(priv))*attrSize + genWrapPointCap + genWrapBlobCap
	for _, a := range append(pub[:len(pub):len(pub)], priv...) {
		size += len(a.Value) + 7 // each value 8-aligned, as a CK_ULONG wants
	}
	block := C.calloc(1, C.size_t(size))
	if block == nil {
		return res, false
	}
	defer C.free(block)
	mem := unsafe.Slice((*byte)(block), size)
	call := (*C.gwCall)(block)
	// The attribute arrays first, where they are aligned, then the values,
	// each at a multiple of 8: a module reads a CK_ULONG value in place,
	// which faults where unaligned loads do.
	tables := int(unsafe.Sizeof(ca))
	off := tables + (len(pub)+len(priv))*attrSize
	template := func(as []*p11.Attribute) *C.gwAttribute {
		t := (*C.gwAttribute)(unsafe.Add(block, tables))
		tables += len(as) * attrSize
		ts := unsafe.Slice(t, len(as))
		for i, a := range as {
			ts[i]._type = C.gwULong(a.Type)
			ts[i].ulValueLen = C.gwULong(len(a.Value))
			if len(a.Value) > 0 {
				off = (off + 7) &^ 7
				ts[i].pValue = unsafe.Add(block, off)
				off += copy(mem[off:], a.Value)
			}
		}
		return t
	}
	call.session, call.genMech, call.wrapKey = C.gwULong(s), C.gwULong(mech), C.gwULong(wh)
	call.pub, call.nPub = template(pub), C.gwULong(len(pub))
	call.priv, call.nPriv = template(priv), C.gwULong(len(priv))
	call.point, call.pointLen = (*C.uchar)(unsafe.Add(block, off)), C.gwULong(genWrapPointCap)
	off += genWrapPointCap
	call.wrapped, call.wrappedLen = (*C.uchar)(unsafe.Add(block, off)), C.gwULong(genWrapBlobCap)
	if keep {
		call.keep = 1
	}
	C.genWrap((*unsafe.Pointer)(fns), call)

	stage, rv := call.stage, p11.Error(call.rv)
	if stage == C.gwGenerate {
		if rv == p11.CKR_CRYPTOKI_NOT_INITIALIZED {
			// Another instance of the module than miekg's: never again.
			disownFns(fns)
			return res, false
		}
		res.err = wrapStepErr(int(stage), rv)
		return res, true
	}
	res.generated = true
	res.pubH, res.privH = p11.ObjectHandle(call.pubH), p11.ObjectHandle(call.privH)
	if stage != C.gwDone && rv == p11.CKR_BUFFER_TOO_SMALL {
		if stage == C.gwWrap {
			res.point = C.GoBytes(unsafe.Pointer(call.point), C.int(call.pointLen))
		}
		return res, true
	}
	res.destroyed = !keep
	if call.destroyRv != 0 {
		res.destroyErr = p11.Error(call.destroyRv)
	}
	if stage != C.gwDone {
		res.err = wrapStepErr(int(stage), rv)
		return res, true
	}
	res.point = C.GoBytes(unsafe.Pointer(call.point), C.int(call.pointLen))
	res.wrapped = C.GoBytes(unsafe.Pointer(call.wrapped), C.int(call.wrappedLen))
	return res, true
}

// wrapStepErr phrases the failure of one step of GenerateWrapped.
func wrapStepErr(stage int, rv p11.Error) error {
	switch stage {
	case C.gwGenerate:
		return fmt.Errorf("C_GenerateKeyPair(session): %w", rv)
	case C.gwPoint:
		return fmt.Errorf("C_GetAttributeValue(CKA_EC_POINT): %w", rv)
	}
	return fmt.Errorf("C_WrapKey(AES-KWP): %w", rv)
}
