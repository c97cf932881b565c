package pkcs11

/*
#cgo linux LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

// The few PKCS#11 types needed here, as the standard's headers define them
// on Unix (natural alignment, no packing).
typedef unsigned long ckULong;
typedef struct { ckULong type; void *pValue; ckULong ulValueLen; } ckAttribute;
typedef ckULong (*ckGetFunctionList)(void **);
typedef ckULong (*ckGetAttributeValue)(ckULong, ckULong, ckAttribute *, ckULong);

// C_GetAttributeValue's place in CK_FUNCTION_LIST, after the 2-byte
// CK_VERSION padded to a pointer: the 25th function (PKCS#11 2.40 and
// 3.0 keep the 2.x order).
enum { getAttributeValueIndex = 24 };

// moduleFunctions returns the module's table of functions (the
// CK_FUNCTION_LIST after its version), or NULL. The module is already
// loaded (RTLD_NOLOAD): this only looks it up, and the reference it takes
// keeps the functions valid for the process.
static void **moduleFunctions(const char *path) {
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (h == NULL) {
		return NULL;
	}
	ckGetFunctionList gfl = (ckGetFunctionList)dlsym(h, "C_GetFunctionList");
	void *list = NULL;
	if (gfl == NULL || gfl(&list) != 0 || list == NULL) {
		return NULL;
	}
	return (void **)((char *)list + sizeof(void *));
}

static void *functionAt(void **fns, int i) {
	return fns[i];
}

static ckULong callGetAttributeValue(void *fn, ckULong session, ckULong object, ckAttribute *t, ckULong n) {
	return ((ckGetAttributeValue)fn)(session, object, t, n);
}
*/
import "C"

import (
	"sync"
	"unsafe"

	p11 "github.com/miekg/pkcs11"
)

// attrSlot is the room an attribute value gets in an attrReader's buffer:
// enough for a label ("mlskeyd:" and a 255-byte id), an id, a curve, a
// key type and the booleans; a longer value (another application's object)
// is read the ordinary way.
const attrSlot = 320

// attrReader reads attributes with one C_GetAttributeValue call per object
// into buffers it reuses. miekg/pkcs11 calls C_GetAttributeValue twice
// (sizes, then values), and SoftHSM's file store refreshes the object from
// its file on each call: at start-up, reading every key, that is half the
// listing's time. Not safe for concurrent use.
type attrReader struct {
	fns  unsafe.Pointer // the module's function table
	fn   unsafe.Pointer // the module's C_GetAttributeValue, nil if not found
	tmpl *C.ckAttribute // up to maxAttrs entries
	bufs unsafe.Pointer // maxAttrs × attrSlot bytes
}

const maxAttrs = 16

var (
	modFnsMu sync.Mutex
	// modFns holds each module's function table by path; nil for a module
	// whose table is not miekg's instance (disown).
	modFns = map[string]unsafe.Pointer{}
)

// moduleFns returns the function table of the module at path (as
// acquireModule resolved it), for calls that miekg/pkcs11 makes in more
// than one round, or nil: always nil when the module is p11-kit's
// (forwarded), which hands out a new, uninitialised module instance for
// every C_GetFunctionList, so that only miekg's own instance is usable.
func moduleFns(path string, forwarded bool) unsafe.Pointer {
	if forwarded {
		return nil
	}
	modFnsMu.Lock()
	defer modFnsMu.Unlock()
	fns, ok := modFns[path]
	if !ok {
		cpath := C.CString(path)
		fns = unsafe.Pointer(C.moduleFunctions(cpath))
		C.free(unsafe.Pointer(cpath))
		modFns[path] = fns
	}
	return fns
}

// disownFns stops every later call through the function table fns (a
// module instance other than miekg's, as p11-kit's).
func disownFns(fns unsafe.Pointer) {
	modFnsMu.Lock()
	for k, f := range modFns {
		if f == fns {
			modFns[k] = nil
		}
	}
	modFnsMu.Unlock()
}

// newAttrReader returns a reader for the module at path; with forwarded
// (or a module whose table is not found) it reads through miekg/pkcs11.
// Free it with free.
func newAttrReader(path string, forwarded bool) *attrReader {
	r := &attrReader{}
	fns := moduleFns(path, forwarded)
	if fns == nil {
		return r
	}
	r.fns = fns
	r.fn = C.functionAt((*unsafe.Pointer)(fns), C.getAttributeValueIndex)
	if r.fn != nil {
		r.tmpl = (*C.ckAttribute)(C.calloc(maxAttrs, C.size_t(unsafe.Sizeof(C.ckAttribute{}))))
		r.bufs = C.calloc(maxAttrs, attrSlot)
	}
	return r
}

func (r *attrReader) free() {
	if r.tmpl != nil {
		C.free(unsafe.Pointer(r.tmpl))
		C.free(r.bufs)
		r.tmpl, r.bufs = nil, nil
	}
}

// read returns the values of the attribute types q on object h, as
// ctx.GetAttributeValue does (same errors; an unavailable value is nil).
func (r *attrReader) read(ctx *p11.Ctx, s p11.SessionHandle, h p11.ObjectHandle, q []*p11.Attribute) ([]*p11.Attribute, error) {
	if r.tmpl == nil || len(q) > maxAttrs {
		return ctx.GetAttributeValue(s, h, q)
	}
	t := unsafe.Slice(r.tmpl, len(q))
	for i, a := range q {
		t[i] = C.ckAttribute{
			_type:      C.ckULong(a.Type),
			pValue:     unsafe.Add(r.bufs, i*attrSlot),
			ulValueLen: attrSlot,
		}
	}
	rv := C.callGetAttributeValue(r.fn, C.ckULong(s), C.ckULong(h), r.tmpl, C.ckULong(len(q)))
	switch {
	case rv == p11.CKR_BUFFER_TOO_SMALL:
		return ctx.GetAttributeValue(s, h, q)
	case rv == p11.CKR_CRYPTOKI_NOT_INITIALIZED:
		// Another instance of the module than miekg's, as p11-kit's:
		// never again for this module.
		r.disown()
		return ctx.GetAttributeValue(s, h, q)
	case rv != p11.CKR_OK:
		return nil, p11.Error(rv)
	}
	out := make([]*p11.Attribute, len(q))
	for i, a := range t {
		out[i] = &p11.Attribute{Type: q[i].Type}
		if a.ulValueLen <= attrSlot { // else CK_UNAVAILABLE_INFORMATION
			out[i].Value = C.GoBytes(a.pValue, C.int(a.ulValueLen))
		}
	}
	return out, nil
}

// readSome is read for a query that may name attributes the object does
// not have: those come back as nil entries instead of failing the call.
// PKCS#11 (v2.40 §5.7) has C_GetAttributeValue fill every attribute it can
// and mark the others CK_UNAVAILABLE_INFORMATION, returning
// CKR_ATTRIBUTE_TYPE_INVALID or CKR_ATTRIBUTE_SENSITIVE; SoftHSM 2.6.1
// does (TestReadSomeOnSoftHSM). An entry that did not fit its slot is
// nil too, which only other applications' objects have. ok is false when
// the reader cannot make the single call (no own instance of the module,
// as behind p11-kit, or too long a query): the caller reads otherwise.
func (r *attrReader) readSome(s p11.SessionHandle, h p11.ObjectHandle, q []*p11.Attribute) (attrs []*p11.Attribute, ok bool, err error) {
	if r.tmpl == nil || len(q) > maxAttrs {
		return nil, false, nil
	}
	t := unsafe.Slice(r.tmpl, len(q))
	for i, a := range q {
		t[i] = C.ckAttribute{
			_type:      C.ckULong(a.Type),
			pValue:     unsafe.Add(r.bufs, i*attrSlot),
			ulValueLen: attrSlot,
		}
	}
	rv := C.callGetAttributeValue(r.fn, C.ckULong(s), C.ckULong(h), r.tmpl, C.ckULong(len(q)))
	switch rv {
	case p11.CKR_OK, p11.CKR_ATTRIBUTE_TYPE_INVALID, p11.CKR_ATTRIBUTE_SENSITIVE, p11.CKR_BUFFER_TOO_SMALL:
	case p11.CKR_CRYPTOKI_NOT_INITIALIZED:
		r.disown()
		return nil, false, nil
	default:
		return nil, true, p11.Error(rv)
	}
	out := make([]*p11.Attribute, len(q))
	for i, a := range t {
		if a.ulValueLen <= attrSlot { // else CK_UNAVAILABLE_INFORMATION
			out[i] = &p11.Attribute{Type: q[i].Type, Value: C.GoBytes(a.pValue, C.int(a.ulValueLen))}
		}
	}
	return out, true, nil
}

// disown stops the reader, and every later one for its module, from
// calling an instance of the module other than miekg's.
func (r *attrReader) disown() {
	disownFns(r.fns)
	r.free()
}
