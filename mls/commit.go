package mls

// HPKECiphertext is RFC 9420 §5.1.3's HPKECiphertext.
type HPKECiphertext struct {
	KEMOutput  []byte
	Ciphertext []byte
}

// UpdatePathNode is one node of an UpdatePath (§7.6): the node's new public
// key and its path secret encrypted to each member of the copath resolution.
type UpdatePathNode struct {
	EncryptionKey       []byte
	EncryptedPathSecret []HPKECiphertext
}

// UpdatePath is RFC 9420 §7.6's UpdatePath. LeafNode carries its signature.
type UpdatePath struct {
	LeafNode LeafNode
	Nodes    []UpdatePathNode
}

// Commit is RFC 9420 §12.4's Commit. Path is nil when absent.
type Commit struct {
	Proposals []ProposalOrRef
	Path      *UpdatePath
}

func (up *UpdatePath) encode(w *Writer) {
	up.LeafNode.encode(w)
	nodes := NewWriter()
	for _, n := range up.Nodes {
		nodes.Vector(n.EncryptionKey)
		cts := NewWriter()
		for _, ct := range n.EncryptedPathSecret {
			cts.Vector(ct.KEMOutput)
			cts.Vector(ct.Ciphertext)
		}
		nodes.VectorFrom(cts)
	}
	w.VectorFrom(nodes)
}

func decodeUpdatePath(d *decoder) UpdatePath {
	var up UpdatePath
	up.LeafNode = decodeLeafNode(d)
	d.list("UpdatePath.nodes", MaxPathNodes, func(d *decoder) {
		var n UpdatePathNode
		n.EncryptionKey = d.vec("UpdatePathNode.encryption_key")
		d.list("UpdatePathNode.encrypted_path_secret", MaxPathSecrets, func(d *decoder) {
			ct := HPKECiphertext{
				KEMOutput:  d.vec("HPKECiphertext.kem_output"),
				Ciphertext: d.vec("HPKECiphertext.ciphertext"),
			}
			if d.err == nil {
				n.EncryptedPathSecret = append(n.EncryptedPathSecret, ct)
			}
		})
		if d.err == nil {
			up.Nodes = append(up.Nodes, n)
		}
	})
	return up
}

func (c *Commit) encode(w *Writer) {
	props := NewWriter()
	for i := range c.Proposals {
		c.Proposals[i].encode(props)
	}
	w.VectorFrom(props)
	w.Optional(c.Path != nil)
	if c.Path != nil {
		c.Path.encode(w)
	}
}

// Marshal returns the TLS encoding of the Commit.
func (c *Commit) Marshal() []byte {
	w := NewWriter()
	c.encode(w)
	return w.Bytes()
}

func decodeCommit(d *decoder) Commit {
	var c Commit
	d.list("Commit.proposals", MaxProposals, func(d *decoder) {
		p := decodeProposalOrRef(d)
		if d.err == nil {
			c.Proposals = append(c.Proposals, p)
		}
	})
	if d.optional("Commit.path") {
		up := decodeUpdatePath(d)
		c.Path = &up
	}
	return c
}

// UnmarshalCommit decodes exactly one Commit. Only the syntax is checked.
func UnmarshalCommit(b []byte) (*Commit, error) {
	d := newDecoder(b)
	c := decodeCommit(d)
	if err := d.finish("Commit"); err != nil {
		return nil, err
	}
	return &c, nil
}
