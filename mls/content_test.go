package mls

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// contentVectors are the messages.json fields used by the strict-content
// tests. The proposal fields hold the bare proposal body (Add, Update, ...)
// without the proposal_type; commit is a bare Commit; public_message_* are
// MLSMessage-wrapped PublicMessages.
type contentVectors struct {
	KeyPackage             hexBytes `json:"mls_key_package"`
	GroupInfo              hexBytes `json:"mls_group_info"`
	Add                    hexBytes `json:"add_proposal"`
	Update                 hexBytes `json:"update_proposal"`
	Remove                 hexBytes `json:"remove_proposal"`
	PSK                    hexBytes `json:"pre_shared_key_proposal"`
	ReInit                 hexBytes `json:"re_init_proposal"`
	ExternalInit           hexBytes `json:"external_init_proposal"`
	GroupContextExtensions hexBytes `json:"group_context_extensions_proposal"`
	Commit                 hexBytes `json:"commit"`
	PublicApplication      hexBytes `json:"public_message_application"`
	PublicProposal         hexBytes `json:"public_message_proposal"`
	PublicCommit           hexBytes `json:"public_message_commit"`
}

func loadContentVectors(t testing.TB) []contentVectors {
	t.Helper()
	var vs []contentVectors
	loadJSON(t, "messages-subset.json", &vs)
	if len(vs) != 300 {
		t.Fatalf("got %d entries, want 300", len(vs))
	}
	return vs
}

// proposalBodies returns each vector's proposal bodies as complete
// Proposals, i.e. with the uint16 proposal_type prepended.
func (v *contentVectors) proposals() map[string][]byte {
	out := map[string][]byte{}
	for _, p := range []struct {
		name string
		typ  uint16
		body []byte
	}{
		{"add", ProposalTypeAdd, v.Add},
		{"update", ProposalTypeUpdate, v.Update},
		{"remove", ProposalTypeRemove, v.Remove},
		{"psk", ProposalTypePSK, v.PSK},
		{"reinit", ProposalTypeReInit, v.ReInit},
		{"external_init", ProposalTypeExternalInit, v.ExternalInit},
		{"group_context_extensions", ProposalTypeGroupContextExtensions, v.GroupContextExtensions},
	} {
		out[p.name] = append([]byte{byte(p.typ >> 8), byte(p.typ)}, p.body...)
	}
	return out
}

// publicMessage is a PublicMessage split into its parts (§6.2).
type publicMessage struct {
	content         []byte // encoded FramedContent
	fc              FramedContent
	signature       []byte
	confirmationTag []byte
	membershipTag   []byte
}

// parsePublicMessage decodes an MLSMessage(PublicMessage):
// FramedContent content; FramedContentAuthData auth (signature, and
// confirmation_tag for commits); membership_tag for member senders.
func parsePublicMessage(b []byte) (*publicMessage, error) {
	d := newDecoder(b)
	version := d.u16("MLSMessage.version")
	wf := d.u16("MLSMessage.wire_format")
	if d.err == nil && (version != ProtocolVersionMLS10 || wf != WireFormatPublicMessage) {
		return nil, fmt.Errorf("not an mls10 PublicMessage: version %d, wire_format %d", version, wf)
	}
	start := d.r.Len()
	var pm publicMessage
	pm.fc = decodeFramedContent(d)
	if d.err == nil {
		pm.content = append([]byte{}, b[len(b)-start:len(b)-d.r.Len()]...)
	}
	pm.signature = d.vec("FramedContentAuthData.signature")
	if pm.fc.ContentType == ContentTypeCommit {
		pm.confirmationTag = d.vec("FramedContentAuthData.confirmation_tag")
	}
	if pm.fc.Sender.Type == SenderTypeMember {
		pm.membershipTag = d.vec("PublicMessage.membership_tag")
	}
	if err := d.finish("PublicMessage"); err != nil {
		return nil, err
	}
	return &pm, nil
}

// syntheticGroupContext is a GroupContext with every field populated.
func syntheticGroupContext() *GroupContext {
	return &GroupContext{
		Version:                 ProtocolVersionMLS10,
		CipherSuite:             1,
		GroupID:                 []byte("group"),
		Epoch:                   42,
		TreeHash:                bytes.Repeat([]byte{0xaa}, 32),
		ConfirmedTranscriptHash: bytes.Repeat([]byte{0xbb}, 32),
		Extensions:              []Extension{{Type: 0xff00, Data: []byte{1, 2, 3}}},
	}
}

// welcomeGroupInfos decrypts the GroupInfos of welcome.json, giving real
// GroupContexts and GroupInfo signatures to test against.
func welcomeGroupInfos(t testing.TB) ([]*GroupInfo, []welcomeVector) {
	t.Helper()
	var vs []welcomeVector
	loadJSON(t, "welcome.json", &vs)
	var gis []*GroupInfo
	var used []welcomeVector
	for _, v := range vs {
		s := mustSuite(t, v.CipherSuite)
		kpMsg, err := UnmarshalMLSMessage(v.KeyPackage)
		if err != nil {
			t.Fatal(err)
		}
		wMsg, err := UnmarshalMLSMessage(v.Welcome)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := kpMsg.KeyPackage.Ref()
		if err != nil {
			t.Fatal(err)
		}
		egs := wMsg.Welcome.Find(ref)
		if egs == nil {
			t.Fatal("no EncryptedGroupSecrets")
		}
		priv, _ := hpkeKey(t, s, v.InitPriv)
		gs, err := s.OpenGroupSecrets(wMsg.Welcome, egs, priv)
		if err != nil {
			t.Fatal(err)
		}
		if len(gs.PSKs) != 0 {
			continue
		}
		gi, err := s.DecryptGroupInfo(wMsg.Welcome, gs, nil)
		if err != nil {
			t.Fatal(err)
		}
		gis = append(gis, gi)
		used = append(used, v)
	}
	if len(gis) == 0 {
		t.Fatal("no GroupInfo decrypted from welcome.json")
	}
	return gis, used
}

func wantMalformed(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: accepted", what)
	} else if !errors.Is(err, ErrMalformed) {
		t.Errorf("%s: error does not wrap ErrMalformed: %v", what, err)
	}
}

func TestProposalVectors(t *testing.T) {
	seen := map[string]int{}
	for i, v := range loadContentVectors(t) {
		for name, b := range v.proposals() {
			p, err := UnmarshalProposal(b)
			if err != nil {
				t.Errorf("%d: %s: %v", i, name, err)
				continue
			}
			if !bytes.Equal(p.Marshal(), b) {
				t.Errorf("%d: %s: re-encoding differs", i, name)
			}
			seen[name]++
			switch name {
			case "add":
				if p.Add == nil || !bytes.Equal(p.Add.Marshal(), b[2:]) {
					t.Errorf("%d: add body", i)
				}
			case "update":
				if p.Update == nil || !bytes.Equal(p.Update.Marshal(), b[2:]) {
					t.Errorf("%d: update body", i)
				}
			case "psk":
				if p.PSK == nil {
					t.Errorf("%d: psk body", i)
				}
			case "reinit":
				if p.ReInit == nil {
					t.Errorf("%d: reinit body", i)
				}
			}
		}
	}
	for name, n := range seen {
		if n != 300 {
			t.Errorf("%s: %d of 300 decoded", name, n)
		}
	}
}

func TestCommitVectors(t *testing.T) {
	var withPath, refs, inline int
	for i, v := range loadContentVectors(t) {
		c, err := UnmarshalCommit(v.Commit)
		if err != nil {
			t.Errorf("%d: %v", i, err)
			continue
		}
		if !bytes.Equal(c.Marshal(), v.Commit) {
			t.Errorf("%d: re-encoding differs", i)
		}
		if c.Path != nil {
			withPath++
			if c.Path.LeafNode.Source != LeafNodeSourceCommit {
				t.Errorf("%d: path leaf_node_source %d", i, c.Path.LeafNode.Source)
			}
		}
		for _, p := range c.Proposals {
			switch p.Type {
			case ProposalOrRefTypeProposal:
				inline++
			case ProposalOrRefTypeReference:
				refs++
			}
		}
	}
	t.Logf("commits with path %d, inline proposals %d, references %d", withPath, inline, refs)
	if withPath == 0 {
		t.Error("no commit with an UpdatePath in the vectors")
	}
}

func TestPublicMessageVectors(t *testing.T) {
	gcs := []*GroupContext{syntheticGroupContext()}
	gis, _ := welcomeGroupInfos(t)
	for _, gi := range gis {
		gcs = append(gcs, &gi.GroupContext)
	}
	senders := map[uint8]int{}
	for i, v := range loadContentVectors(t) {
		for _, m := range []struct {
			name        string
			contentType uint8
			b           []byte
		}{
			{"application", ContentTypeApplication, v.PublicApplication},
			{"proposal", ContentTypeProposal, v.PublicProposal},
			{"commit", ContentTypeCommit, v.PublicCommit},
		} {
			pm, err := parsePublicMessage(m.b)
			if err != nil {
				t.Errorf("%d: %s: %v", i, m.name, err)
				continue
			}
			if pm.fc.ContentType != m.contentType {
				t.Errorf("%d: %s: content_type %d", i, m.name, pm.fc.ContentType)
			}
			if !bytes.Equal(pm.fc.Marshal(), pm.content) {
				t.Errorf("%d: %s: FramedContent re-encoding differs", i, m.name)
			}
			if fc, err := UnmarshalFramedContent(pm.content); err != nil || !bytes.Equal(fc.Marshal(), pm.content) {
				t.Errorf("%d: %s: UnmarshalFramedContent: %v", i, m.name, err)
			}
			senders[pm.fc.Sender.Type]++
			for _, wf := range []uint16{WireFormatPublicMessage, WireFormatPrivateMessage} {
				tbs := append([]byte{0, 1, byte(wf >> 8), byte(wf)}, pm.content...)
				if hasGroupContext(pm.fc.Sender.Type) {
					// The messages carry no GroupContext; bind a real one.
					gc := gcs[(i+int(wf))%len(gcs)]
					tbs = append(tbs, gc.Marshal()...)
				}
				got, err := ParseFramedContentTBS(tbs)
				if err != nil {
					t.Errorf("%d: %s: ParseFramedContentTBS: %v", i, m.name, err)
					continue
				}
				if !bytes.Equal(got.Marshal(), tbs) {
					t.Errorf("%d: %s: FramedContentTBS re-encoding differs", i, m.name)
				}
				if got.Version != ProtocolVersionMLS10 || got.WireFormat != wf || got.Content.ContentType != m.contentType {
					t.Errorf("%d: %s: header %+v", i, m.name, got)
				}
				if (got.Context != nil) != hasGroupContext(pm.fc.Sender.Type) {
					t.Errorf("%d: %s: context presence", i, m.name)
				}
				if !hasGroupContext(pm.fc.Sender.Type) {
					// A GroupContext where none belongs is trailing data.
					_, err := ParseFramedContentTBS(append(tbs, gcs[0].Marshal()...))
					wantMalformed(t, "context for non-member sender", err)
				} else {
					// Leaving it out must fail.
					_, err := ParseFramedContentTBS(tbs[:4+len(pm.content)])
					wantMalformed(t, "member sender without context", err)
				}
			}
		}
	}
	t.Logf("sender types: %v", senders)
}

// TestFramedContentTBSSenders covers every sender type with a synthetic
// FramedContent, including new_member_commit (which carries a context).
func TestFramedContentTBSSenders(t *testing.T) {
	gc := syntheticGroupContext()
	bodies := []FramedContent{
		{ContentType: ContentTypeApplication, ApplicationData: []byte("hello")},
		{ContentType: ContentTypeProposal, Proposal: &Proposal{Type: ProposalTypeRemove, Removed: 7}},
		{ContentType: ContentTypeProposal, Proposal: &Proposal{Type: ProposalTypeExternalInit, KEMOutput: []byte{1, 2}}},
		{ContentType: ContentTypeCommit, Commit: &Commit{Proposals: []ProposalOrRef{
			{Type: ProposalOrRefTypeReference, Reference: bytes.Repeat([]byte{9}, 32)},
			{Type: ProposalOrRefTypeProposal, Proposal: &Proposal{Type: ProposalTypeGroupContextExtensions, Extensions: []Extension{{Type: 3, Data: []byte{}}}}},
		}}},
	}
	for _, st := range []Sender{
		{Type: SenderTypeMember, LeafIndex: 3},
		{Type: SenderTypeExternal, SenderIndex: 1},
		{Type: SenderTypeNewMemberProposal},
		{Type: SenderTypeNewMemberCommit},
	} {
		for _, body := range bodies {
			fc := body
			fc.GroupID = []byte("group")
			fc.Epoch = 42
			fc.Sender = st
			fc.AuthenticatedData = []byte("aad")
			tbs := &FramedContentTBS{Version: ProtocolVersionMLS10, WireFormat: WireFormatPublicMessage, Content: fc}
			if hasGroupContext(st.Type) {
				tbs.Context = gc
			}
			enc := tbs.Marshal()
			got, err := ParseFramedContentTBS(enc)
			if err != nil {
				t.Fatalf("sender %d content %d: %v", st.Type, fc.ContentType, err)
			}
			if !bytes.Equal(got.Marshal(), enc) || got.Content.Sender != st {
				t.Errorf("sender %d content %d: round trip", st.Type, fc.ContentType)
			}
		}
	}
}

func TestGroupInfoTBSVectors(t *testing.T) {
	for i, v := range loadContentVectors(t) {
		m, err := UnmarshalMLSMessage(v.GroupInfo)
		if err != nil || m.GroupInfo == nil {
			t.Fatalf("%d: %v", i, err)
		}
		tbs := m.GroupInfo.TBS()
		gi, err := ParseGroupInfoTBS(tbs)
		if err != nil {
			t.Errorf("%d: %v", i, err)
			continue
		}
		if gi.Signature != nil || !bytes.Equal(gi.TBS(), tbs) {
			t.Errorf("%d: round trip", i)
		}
	}
	// Real signatures: the re-encoded TBS is what the signer signed.
	gis, vs := welcomeGroupInfos(t)
	for i, gi := range gis {
		s := mustSuite(t, vs[i].CipherSuite)
		parsed, err := ParseGroupInfoTBS(gi.TBS())
		if err != nil {
			t.Fatalf("%v: %v", s.ID, err)
		}
		if err := s.VerifyWithLabel(vs[i].SignerPub, LabelGroupInfoTBS, parsed.TBS(), gi.Signature); err != nil {
			t.Errorf("%v: signature over re-encoded TBS: %v", s.ID, err)
		}
	}
}

// allKeyPackages returns the KeyPackages of messages-subset.json (both
// mls_key_package and the add proposals) and welcome.json.
func allKeyPackages(t testing.TB) []*KeyPackage {
	var out []*KeyPackage
	for i, v := range loadContentVectors(t) {
		m, err := UnmarshalMLSMessage(v.KeyPackage)
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		out = append(out, m.KeyPackage)
		kp, err := UnmarshalKeyPackage(v.Add)
		if err != nil {
			t.Fatalf("%d: add: %v", i, err)
		}
		out = append(out, kp)
	}
	var wv []welcomeVector
	loadJSON(t, "welcome.json", &wv)
	for _, v := range wv {
		m, err := UnmarshalMLSMessage(v.KeyPackage)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m.KeyPackage)
	}
	return out
}

func TestKeyPackageTBSVectors(t *testing.T) {
	for i, kp := range allKeyPackages(t) {
		tbs := kp.TBS()
		got, err := ParseKeyPackageTBS(tbs)
		if err != nil {
			t.Errorf("%d: %v", i, err)
			continue
		}
		if got.Signature != nil || !bytes.Equal(got.TBS(), tbs) {
			t.Errorf("%d: round trip", i)
		}
		s := mustSuite(t, kp.CipherSuite)
		if err := s.VerifyWithLabel(kp.LeafNode.SignatureKey, LabelKeyPackageTBS, got.TBS(), kp.Signature); err != nil {
			t.Errorf("%d: signature over re-encoded TBS: %v", i, err)
		}
	}
}

// leafTBSCase is a LeafNodeTBS to test, with a signature to check when the
// vector's signature is real.
type leafTBSCase struct {
	name      string
	ln        *LeafNode
	groupID   []byte
	leafIndex uint32
	verify    bool
	suite     CipherSuite
}

func allLeafNodeTBS(t testing.TB) []leafTBSCase {
	var out []leafTBSCase
	for i, kp := range allKeyPackages(t) {
		out = append(out, leafTBSCase{name: fmt.Sprintf("kp%d", i), ln: &kp.LeafNode, verify: true, suite: kp.CipherSuite})
	}
	for i, v := range loadContentVectors(t) {
		ln, err := UnmarshalLeafNode(v.Update)
		if err != nil {
			t.Fatalf("%d: update: %v", i, err)
		}
		out = append(out, leafTBSCase{name: fmt.Sprintf("update%d", i), ln: ln, groupID: []byte(fmt.Sprintf("group-%d", i)), leafIndex: uint32(i)})
		c, err := UnmarshalCommit(v.Commit)
		if err != nil {
			t.Fatalf("%d: commit: %v", i, err)
		}
		if c.Path != nil {
			out = append(out, leafTBSCase{name: fmt.Sprintf("commit%d", i), ln: &c.Path.LeafNode, groupID: nil, leafIndex: 0xffffffff})
		}
	}
	return out
}

func TestLeafNodeTBSVectors(t *testing.T) {
	sources := map[uint8]int{}
	for _, c := range allLeafNodeTBS(t) {
		tbs := c.ln.TBS(c.groupID, c.leafIndex)
		got, err := UnmarshalLeafNodeTBS(tbs)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		sources[got.LeafNode.Source]++
		if got.LeafNode.Signature != nil || !bytes.Equal(got.Marshal(), tbs) {
			t.Errorf("%s: round trip", c.name)
		}
		bound := c.ln.Source == LeafNodeSourceUpdate || c.ln.Source == LeafNodeSourceCommit
		if bound && (!bytes.Equal(got.GroupID, c.groupID) || got.LeafIndex != c.leafIndex) {
			t.Errorf("%s: group_id/leaf_index %x/%d", c.name, got.GroupID, got.LeafIndex)
		}
		if !bound && (got.GroupID != nil || got.LeafIndex != 0) {
			t.Errorf("%s: key_package leaf bound to a group", c.name)
		}
		ln, err := ParseLeafNodeTBS(tbs)
		if err != nil || ln.Signature != nil || !bytes.Equal(ln.TBS(c.groupID, c.leafIndex), tbs) {
			t.Errorf("%s: ParseLeafNodeTBS: %v", c.name, err)
		}
		if c.verify {
			s := mustSuite(t, c.suite)
			if err := s.VerifyWithLabel(c.ln.SignatureKey, LabelLeafNodeTBS, got.Marshal(), c.ln.Signature); err != nil {
				t.Errorf("%s: signature over re-encoded TBS: %v", c.name, err)
			}
		}
		// A key_package leaf carries no group binding: appending one is
		// trailing data. An update/commit leaf without it is truncated.
		if !bound {
			_, err := ParseLeafNodeTBS(append(append([]byte{}, tbs...), 0, 0, 0, 0, 0))
			wantMalformed(t, c.name+" with group binding", err)
		} else {
			unbound := c.ln.TBS(nil, 0) // content || empty group_id || leaf_index
			_, err := ParseLeafNodeTBS(unbound[:len(unbound)-5])
			wantMalformed(t, c.name+" without group binding", err)
		}
	}
	t.Logf("leaf sources: %v", sources)
	for src := LeafNodeSourceKeyPackage; src <= LeafNodeSourceCommit; src++ {
		if sources[src] == 0 {
			t.Errorf("no leaf with source %d", src)
		}
	}
}

// tbsSamples returns encoded inputs for each parser, for the negative and
// fuzz tests. Every step-th vector is used.
func tbsSamples(t testing.TB, step int) (framed, leaf, kp, gi [][]byte) {
	gc := syntheticGroupContext()
	for i, v := range loadContentVectors(t) {
		if i%step != 0 {
			continue
		}
		for _, b := range [][]byte{v.PublicApplication, v.PublicProposal, v.PublicCommit} {
			pm, err := parsePublicMessage(b)
			if err != nil {
				t.Fatal(err)
			}
			tbs := append([]byte{0, 1, 0, 1}, pm.content...)
			if hasGroupContext(pm.fc.Sender.Type) {
				tbs = append(tbs, gc.Marshal()...)
			}
			framed = append(framed, tbs)
		}
		m, err := UnmarshalMLSMessage(v.GroupInfo)
		if err != nil {
			t.Fatal(err)
		}
		gi = append(gi, m.GroupInfo.TBS())
	}
	for i, k := range allKeyPackages(t) {
		if i%step == 0 {
			kp = append(kp, k.TBS())
		}
	}
	for i, c := range allLeafNodeTBS(t) {
		if i%step == 0 {
			leaf = append(leaf, c.ln.TBS(c.groupID, c.leafIndex))
		}
	}
	return framed, leaf, kp, gi
}

type tbsParser struct {
	name  string
	parse func([]byte) error
}

var tbsParsers = []tbsParser{
	{"FramedContentTBS", func(b []byte) error { _, err := ParseFramedContentTBS(b); return err }},
	{"LeafNodeTBS", func(b []byte) error { _, err := ParseLeafNodeTBS(b); return err }},
	{"KeyPackageTBS", func(b []byte) error { _, err := ParseKeyPackageTBS(b); return err }},
	{"GroupInfoTBS", func(b []byte) error { _, err := ParseGroupInfoTBS(b); return err }},
}

func TestTBSTruncationAndTrailing(t *testing.T) {
	framed, leaf, kp, gi := tbsSamples(t, 37)
	for pi, inputs := range [][][]byte{framed, leaf, kp, gi} {
		p := tbsParsers[pi]
		if len(inputs) == 0 {
			t.Fatalf("%s: no samples", p.name)
		}
		for j, b := range inputs {
			if err := p.parse(b); err != nil {
				t.Fatalf("%s %d: sample rejected: %v", p.name, j, err)
			}
			for n := 0; n < len(b); n++ {
				if err := p.parse(b[:n]); err == nil || !errors.Is(err, ErrMalformed) {
					t.Fatalf("%s %d: truncation to %d of %d: %v", p.name, j, n, len(b), err)
				}
			}
			for _, tail := range [][]byte{{0}, {1}, {0xff, 0xff}} {
				err := p.parse(append(append([]byte{}, b...), tail...))
				wantMalformed(t, p.name+" trailing", err)
				if err != nil && !strings.Contains(err.Error(), "trailing") {
					t.Errorf("%s: trailing error does not say so: %v", p.name, err)
				}
			}
		}
	}
}

// framedTBS builds a FramedContentTBS for an external sender with the given
// content body appended raw after content_type.
func framedTBS(contentType uint8, body []byte) []byte {
	w := NewWriter()
	w.U16(ProtocolVersionMLS10)
	w.U16(WireFormatPublicMessage)
	w.Vector([]byte("g"))
	w.U64(1)
	w.U8(SenderTypeExternal)
	w.U32(0)
	w.Vector(nil)
	w.U8(contentType)
	w.Raw(body)
	return w.Bytes()
}

func TestStrictContentRejects(t *testing.T) {
	check := func(name string, err error, field string) {
		t.Helper()
		wantMalformed(t, name, err)
		if err != nil && field != "" && !strings.Contains(err.Error(), field) {
			t.Errorf("%s: error does not name %s: %v", name, field, err)
		}
	}
	parseFramed := func(b []byte) error { _, err := ParseFramedContentTBS(b); return err }

	// A valid baseline.
	if err := parseFramed(framedTBS(ContentTypeProposal, []byte{0, 3, 0, 0, 0, 1})); err != nil {
		t.Fatalf("baseline: %v", err)
	}
	// Unknown proposal types (including reserved 0 and GREASE-like
	// values) cannot be skipped: no length prefix.
	for _, typ := range []uint16{0, 8, 0x0a0a, 0xf000, 0xffff} {
		b := []byte{byte(typ >> 8), byte(typ), 0, 0, 0, 1}
		_, err := UnmarshalProposal(b)
		check(fmt.Sprintf("proposal type %d", typ), err, "Proposal.proposal_type")
		check(fmt.Sprintf("framed proposal type %d", typ), parseFramed(framedTBS(ContentTypeProposal, b)), "Proposal.proposal_type")
		commit := append(append([]byte{byte(1 + len(b)), ProposalOrRefTypeProposal}, b...), 0)
		_, err = UnmarshalCommit(commit)
		check(fmt.Sprintf("commit with proposal type %d", typ), err, "Proposal.proposal_type")
	}
	// Bad wire formats.
	for _, wf := range []uint16{0, WireFormatWelcome, WireFormatGroupInfo, WireFormatKeyPackage, 0xffff} {
		b := framedTBS(ContentTypeApplication, []byte{0})
		b[2], b[3] = byte(wf>>8), byte(wf)
		check(fmt.Sprintf("wire_format %d", wf), parseFramed(b), "wire_format")
	}
	// Versions other than mls10.
	for _, ver := range []uint16{0, 2, 0x0100, 0xffff} {
		b := framedTBS(ContentTypeApplication, []byte{0})
		b[0], b[1] = byte(ver>>8), byte(ver)
		err := parseFramed(b)
		check(fmt.Sprintf("version %d", ver), err, "FramedContentTBS.version")
		if !errors.Is(err, ErrUnsupportedVersion) {
			t.Errorf("version %d: does not wrap ErrUnsupportedVersion: %v", ver, err)
		}

		gc := syntheticGroupContext()
		gc.Version = ver
		member := &FramedContentTBS{Version: ProtocolVersionMLS10, WireFormat: WireFormatPublicMessage,
			Content: FramedContent{Sender: Sender{Type: SenderTypeMember}, ContentType: ContentTypeApplication}, Context: gc}
		err = parseFramed(member.Marshal())
		check(fmt.Sprintf("context version %d", ver), err, "GroupContext.version")
		if !errors.Is(err, ErrUnsupportedVersion) {
			t.Errorf("context version %d: does not wrap ErrUnsupportedVersion: %v", ver, err)
		}

		gi := &GroupInfo{GroupContext: *gc, ConfirmationTag: []byte{1}}
		_, err = ParseGroupInfoTBS(gi.TBS())
		check(fmt.Sprintf("GroupInfoTBS version %d", ver), err, "GroupContext.version")
		if !errors.Is(err, ErrUnsupportedVersion) {
			t.Errorf("GroupInfoTBS version %d: does not wrap ErrUnsupportedVersion: %v", ver, err)
		}
	}
	kps := allKeyPackages(t)
	kp := *kps[0]
	kp.Version = 2
	_, err := ParseKeyPackageTBS(kp.TBS())
	check("KeyPackageTBS version 2", err, "KeyPackageTBS.version")
	if !errors.Is(err, ErrUnsupportedVersion) {
		t.Errorf("KeyPackageTBS version 2: does not wrap ErrUnsupportedVersion: %v", err)
	}
	// A full KeyPackage (with signature) is not a KeyPackageTBS, nor a
	// LeafNode a LeafNodeTBS: the signature is trailing data.
	_, err = ParseKeyPackageTBS(kps[0].Marshal())
	check("signed KeyPackage as TBS", err, "trailing")
	_, err = ParseLeafNodeTBS(kps[0].LeafNode.Marshal())
	check("signed LeafNode as TBS", err, "trailing")

	// Sender, content and ProposalOrRef types.
	for _, st := range []uint8{0, 5, 0xff} {
		b := framedTBS(ContentTypeApplication, []byte{0})
		b[4+2+8] = st
		check(fmt.Sprintf("sender_type %d", st), parseFramed(b), "Sender.sender_type")
	}
	for _, ct := range []uint8{0, 4, 0xff} {
		check(fmt.Sprintf("content_type %d", ct), parseFramed(framedTBS(ct, []byte{0})), "FramedContent.content_type")
	}
	for _, typ := range []uint8{0, 3, 0xff} {
		_, err := UnmarshalCommit([]byte{2, typ, 0, 0})
		check(fmt.Sprintf("ProposalOrRef type %d", typ), err, "ProposalOrRef.type")
	}
	_, err = UnmarshalCommit([]byte{0, 2})
	check("commit path presence byte 2", err, "Commit.path")
	// A vector length beyond the input.
	check("huge application_data", parseFramed(framedTBS(ContentTypeApplication, []byte{0xbf, 0xff, 0xff, 0xff})), "application_data")
	// Non-minimal varint.
	check("non-minimal varint", parseFramed(framedTBS(ContentTypeApplication, []byte{0x40, 0x01, 0})), "application_data")
	// Leaf node source.
	ln := kps[0].LeafNode
	ln.Source = 4
	_, err = ParseLeafNodeTBS(ln.TBS(nil, 0))
	check("leaf_node_source 4", err, "leaf_node_source")
}

func TestProposalMarshalZeroBodies(t *testing.T) {
	// Nil bodies encode as zero values and decode back to the same bytes.
	for typ := ProposalTypeAdd; typ <= ProposalTypeGroupContextExtensions; typ++ {
		p := &Proposal{Type: typ}
		b := p.Marshal()
		got, err := UnmarshalProposal(b)
		if typ == ProposalTypeAdd || typ == ProposalTypeUpdate || typ == ProposalTypePSK {
			// Zero KeyPackage / LeafNode / PreSharedKeyID have invalid
			// selector values (credential type 0, source 0, psktype 0).
			wantMalformed(t, fmt.Sprintf("zero body %d", typ), err)
			continue
		}
		if err != nil || !bytes.Equal(got.Marshal(), b) {
			t.Errorf("type %d: %v", typ, err)
		}
	}
}

type protectionVector struct {
	CipherSuite             CipherSuite `json:"cipher_suite"`
	GroupID                 hexBytes    `json:"group_id"`
	Epoch                   uint64      `json:"epoch"`
	TreeHash                hexBytes    `json:"tree_hash"`
	ConfirmedTranscriptHash hexBytes    `json:"confirmed_transcript_hash"`
	SignaturePriv           hexBytes    `json:"signature_priv"`
	SignaturePub            hexBytes    `json:"signature_pub"`
	Proposal                hexBytes    `json:"proposal"`
	ProposalPub             hexBytes    `json:"proposal_pub"`
	Commit                  hexBytes    `json:"commit"`
	CommitPub               hexBytes    `json:"commit_pub"`
}

// TestFramedContentTBSSignatures uses message-protection.json, whose
// PublicMessages carry real signatures by member senders: the
// FramedContentTBS built from the message and the vector's GroupContext,
// parsed and re-encoded, must verify under signature_pub; and a signature
// made over a parsed TBS must verify too.
func TestFramedContentTBSSignatures(t *testing.T) {
	var vs []protectionVector
	loadJSON(t, "message-protection.json", &vs)
	if len(vs) != 7 {
		t.Fatalf("got %d entries, want 7", len(vs))
	}
	for _, v := range vs {
		s := mustSuite(t, v.CipherSuite)
		gc := &GroupContext{
			Version:                 ProtocolVersionMLS10,
			CipherSuite:             v.CipherSuite,
			GroupID:                 v.GroupID,
			Epoch:                   v.Epoch,
			TreeHash:                v.TreeHash,
			ConfirmedTranscriptHash: v.ConfirmedTranscriptHash,
		}
		for _, m := range []struct {
			name string
			msg  []byte
			body []byte
		}{{"proposal", v.ProposalPub, v.Proposal}, {"commit", v.CommitPub, v.Commit}} {
			pm, err := parsePublicMessage(m.msg)
			if err != nil {
				t.Fatalf("%v %s: %v", s.ID, m.name, err)
			}
			if pm.fc.Sender.Type != SenderTypeMember {
				t.Fatalf("%v %s: sender type %d", s.ID, m.name, pm.fc.Sender.Type)
			}
			switch {
			case pm.fc.Proposal != nil && !bytes.Equal(pm.fc.Proposal.Marshal(), m.body),
				pm.fc.Commit != nil && !bytes.Equal(pm.fc.Commit.Marshal(), m.body):
				t.Errorf("%v %s: body differs from the vector's", s.ID, m.name)
			}
			tbs := append(append([]byte{0, 1, 0, 1}, pm.content...), gc.Marshal()...)
			got, err := ParseFramedContentTBS(tbs)
			if err != nil {
				t.Fatalf("%v %s: %v", s.ID, m.name, err)
			}
			enc := got.Marshal()
			if !bytes.Equal(enc, tbs) {
				t.Fatalf("%v %s: re-encoding differs", s.ID, m.name)
			}
			if err := s.VerifyWithLabel(v.SignaturePub, LabelFramedContentTBS, enc, pm.signature); err != nil {
				t.Errorf("%v %s: vector signature: %v", s.ID, m.name, err)
			}
			// Another wire format or context changes what is signed.
			other := append([]byte{}, tbs...)
			other[3] = byte(WireFormatPrivateMessage)
			if err := s.VerifyWithLabel(v.SignaturePub, LabelFramedContentTBS, other, pm.signature); err == nil {
				t.Errorf("%v %s: signature verified for private_message", s.ID, m.name)
			}
			// Strict-mode flow: parse, then sign.
			priv := []byte(v.SignaturePriv)
			if s.SignatureScheme != SchemeEd25519 && s.SignatureScheme != SchemeEd448 {
				// Big-endian scalars may come without leading zeros (P-521).
				size := (s.ecdsaCurve().Params().BitSize + 7) / 8
				for len(priv) < size {
					priv = append([]byte{0}, priv...)
				}
			}
			sig, err := s.SignWithLabel(signerFromPriv(t, s, priv), LabelFramedContentTBS, enc)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.VerifyWithLabel(v.SignaturePub, LabelFramedContentTBS, tbs, sig); err != nil {
				t.Errorf("%v %s: own signature: %v", s.ID, m.name, err)
			}
		}
	}
}
