//! The VMM's snapshot on a real KVM vCPU and a real memory file: a vCPU's state
//! survives KVM -> Xen's HVM records -> save file -> KVM, and the memory writer
//! skips holes and zero pages. Needs /dev/kvm (fails loudly without it).
//!
//! `test_memory_save_bench_256mib` prints the save/restore figures of a 256 MiB
//! memory file against `cp` (run it with `--release --nocapture` for the numbers).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use xen_stream::abi::{x86_tsc_info, PAGE_SIZE};
use xen_stream::{read_save_file, DomainState, HvmContext, PageSinkError, StreamWriter, XlHeader};
use xen_vmm::snapshot::{write_memory, KvmVcpuState};

fn vm() -> (Kvm, VmFd) {
    let kvm = Kvm::new().expect("/dev/kvm must be usable for this test");
    let vm = kvm.create_vm().expect("create a VM");
    vm.create_irq_chip()
        .expect("in-kernel irqchip (the LAPIC state needs it)");
    (kvm, vm)
}

fn vcpu(kvm: &Kvm, vm: &VmFd) -> VcpuFd {
    let v = vm.create_vcpu(0).expect("create a vCPU");
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("cpuid");
    xen_vmm::boot::xen_cpuid(&mut cpuid);
    v.set_cpuid2(&cpuid).expect("set cpuid");
    v
}

fn comparable(s: &KvmVcpuState) -> xen_stream::HvmVcpu {
    let mut h = s.to_hvm();
    h.cpu.tsc = 0; // the TSC runs on
    h
}

#[test]
fn test_vcpu_state_through_save_file_same() {
    // Arrange: a vCPU in long mode with recognisable registers, FPU and MSRs.
    let (kvm, vm1) = vm();
    let v1 = vcpu(&kvm, &vm1);
    let s = v1.get_sregs().expect("sregs");
    v1.set_sregs(&xen_vmm::boot::long_mode_sregs(s))
        .expect("long mode");
    v1.set_regs(&kvm_regs {
        rax: 0x1111,
        rbx: 0x2222,
        r15: 0xffff_8000_0000_0015,
        rip: 0x10_0000,
        rsp: 0x7ff0,
        rflags: 0x202,
        ..Default::default()
    })
    .expect("regs");
    let mut fpu = xen_vmm::boot::fpu();
    fpu.xmm[3] = [0x5a; 16];
    v1.set_fpu(&fpu).expect("fpu");
    let mut state = KvmVcpuState::capture(&v1).expect("capture");
    for (i, v) in state.msrs.iter_mut() {
        match *i {
            0xc000_0082 => *v = 0xffff_8000_0001_0000, // LSTAR
            0xc000_0102 => *v = 0xffff_8000_0002_0000, // KERNEL_GS_BASE
            _ => {}
        }
    }
    state.apply(&v1).expect("apply the MSRs");
    let before = KvmVcpuState::capture(&v1).expect("capture");

    // Act: through a save file, into a new VM's vCPU.
    let ctx = HvmContext::new(vec![before.to_hvm()], 0, 2_000_000);
    let dstate = DomainState {
        xen_version: (4, 17),
        tsc: x86_tsc_info {
            khz: 2_000_000,
            ..Default::default()
        },
        hvm: ctx,
        params: vec![],
        cpuid_policy: vec![],
        msr_policy: vec![],
    };
    let mut w = StreamWriter::begin(Vec::new(), &XlHeader::default(), (4, 17), &[], &[]).unwrap();
    w.write_pages(&[0], &[1; PAGE_SIZE]).unwrap();
    let file = w.finish(&dstate).unwrap();
    let mut sink = |_: u64, _: &[u8]| -> Result<(), PageSinkError> { Ok(()) };
    let (_, back) = read_save_file(&mut &file[..], |_| Ok(1), &mut sink).expect("read back");
    let (_, vm2) = vm();
    let v2 = vcpu(&kvm, &vm2);
    KvmVcpuState::from_hvm(&back.hvm.vcpus[0])
        .apply(&v2)
        .expect("apply to the new vCPU");
    let after = KvmVcpuState::capture(&v2).expect("capture the new vCPU");

    // Assert
    assert_eq!(comparable(&after), comparable(&before));
    assert_eq!(after.regs.r15, 0xffff_8000_0000_0015);
    assert_eq!(after.fpu.xmm[3], [0x5a; 16]);
    assert!(after.msrs.contains(&(0xc000_0082, 0xffff_8000_0001_0000)));
    let tsc = |s: &KvmVcpuState| s.msrs.iter().find(|(i, _)| *i == 0x10).unwrap().1;
    assert!(tsc(&after) >= tsc(&before), "the restored TSC went back");
}

fn memfd(pages: u64) -> std::fs::File {
    let f = tempfile::tempfile_in("/dev/shm").expect("a tmpfs file in /dev/shm");
    f.set_len(pages * PAGE_SIZE as u64)
        .expect("size the memory file");
    f
}

fn save(file: &std::fs::File, pages: u64) -> (Vec<u8>, xen_vmm::snapshot::MemoryStats) {
    let mut w = StreamWriter::begin(Vec::new(), &XlHeader::default(), (4, 17), &[], &[]).unwrap();
    let stats = write_memory(file, pages, &mut w, |_| {}).expect("write the memory");
    let v = vec![xen_stream::HvmVcpu {
        cpu: Default::default(),
        lapic: None,
        lapic_regs: None,
    }];
    let st = DomainState {
        xen_version: (4, 17),
        tsc: Default::default(),
        hvm: HvmContext::new(v, 0, 0),
        params: vec![],
        cpuid_policy: vec![],
        msr_policy: vec![],
    };
    (w.finish(&st).unwrap(), stats)
}

fn fill(pfn: u64) -> u8 {
    (pfn % 200) as u8 + 1
}

#[test]
fn test_memory_writer_skips_holes_and_zero_pages() {
    // Arrange: 4096 pages; data at 0, 1, 2000, 4095; an explicit zero page at 10.
    let f = memfd(4096);
    for pfn in [0u64, 1, 2000, 4095] {
        f.write_all_at(&[fill(pfn); PAGE_SIZE], pfn * PAGE_SIZE as u64)
            .unwrap();
    }
    f.write_all_at(&[0; PAGE_SIZE], 10 * PAGE_SIZE as u64)
        .unwrap();

    // Act
    let (bytes, stats) = save(&f, 4096);
    let mut pages = BTreeMap::new();
    let mut sink = |pfn: u64, p: &[u8]| -> Result<(), PageSinkError> {
        pages.insert(pfn, p[0]);
        Ok(())
    };
    read_save_file(&mut &bytes[..], |_| Ok(4096), &mut sink).expect("read back");

    // Assert
    let want: BTreeMap<u64, u8> = [0, 1, 2000, 4095].map(|p| (p, fill(p))).into();
    assert_eq!(pages, want);
    assert_eq!(stats.pages, 4);
    assert_eq!(stats.pages + stats.skipped, 4096);
    assert!(
        bytes.len() < 5 * PAGE_SIZE + 4096,
        "holes were written: {} bytes",
        bytes.len()
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn test_memory_save_bench_256mib() {
    // A 256 MiB memory file, every page written (the worst case for the saver).
    const PAGES: u64 = 256 << 8;
    let named = tempfile::NamedTempFile::new_in("/dev/shm").expect("a tmpfs file in /dev/shm");
    named.as_file().set_len(PAGES * PAGE_SIZE as u64).unwrap();
    let f = named.as_file();
    let chunk: Vec<u8> = (0..(1 << 20))
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8 | 1)
        .collect();
    for off in (0..PAGES * PAGE_SIZE as u64).step_by(1 << 20) {
        f.write_all_at(&chunk, off).unwrap();
    }
    let dir =
        tempfile::tempdir_in(std::env::var("SAVE_BENCH_DIR").unwrap_or("/tmp".into())).unwrap();
    let src = named.path();
    let (mut save_t, mut restore_t, mut cp_t) = (vec![], vec![], vec![]);
    let mut size = 0;
    for run in 0..3 {
        let path = dir.path().join(format!("g{run}.save"));
        let t = Instant::now();
        let out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
        let mut w = StreamWriter::begin(out, &XlHeader::default(), (4, 17), &[], &[]).unwrap();
        let stats = write_memory(f, PAGES, &mut w, |_| {}).unwrap();
        let st = DomainState {
            xen_version: (4, 17),
            tsc: Default::default(),
            hvm: HvmContext::new(
                vec![xen_stream::HvmVcpu {
                    cpu: Default::default(),
                    lapic: None,
                    lapic_regs: None,
                }],
                0,
                0,
            ),
            params: vec![],
            cpuid_policy: vec![],
            msr_policy: vec![],
        };
        let mut out = w.finish(&st).unwrap();
        out.flush().unwrap();
        out.get_ref().sync_all().unwrap();
        save_t.push(t.elapsed());
        assert_eq!(stats.pages, PAGES);
        size = std::fs::metadata(&path).unwrap().len();

        // Restore: into a fresh memory file of the same size.
        let dst = memfd(PAGES);
        let t = Instant::now();
        let mut input =
            std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path).unwrap());
        let mut sink = |pfn: u64, p: &[u8]| -> Result<(), PageSinkError> {
            dst.write_all_at(p, pfn * PAGE_SIZE as u64)?;
            Ok(())
        };
        read_save_file(&mut input, |_| Ok(PAGES), &mut sink).unwrap();
        restore_t.push(t.elapsed());
        let mut a = vec![0u8; 1 << 20];
        dst.read_exact_at(&mut a, 200 << 20).unwrap();
        assert_eq!(a, chunk, "restored memory differs");
        drop(dst);
        std::fs::remove_file(&path).unwrap();

        let cp_dst = dir.path().join(format!("g{run}.cp"));
        let t = Instant::now();
        let st = std::process::Command::new("cp")
            .arg(src)
            .arg(&cp_dst)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::File::open(&cp_dst).unwrap().sync_all().unwrap();
        cp_t.push(t.elapsed());
        std::fs::remove_file(&cp_dst).unwrap();
    }
    let mb = (PAGES * PAGE_SIZE as u64) as f64 / (1 << 20) as f64;
    let (s, r, c) = (median(save_t), median(restore_t), median(cp_t));
    println!(
        "256 MiB guest memory, median of 3: save {:.0} ms ({:.0} MB/s, file {} MiB), restore {:.0} ms ({:.0} MB/s), cp {:.0} ms ({:.0} MB/s)",
        s.as_secs_f64() * 1e3, mb / s.as_secs_f64(), size >> 20,
        r.as_secs_f64() * 1e3, mb / r.as_secs_f64(),
        c.as_secs_f64() * 1e3, mb / c.as_secs_f64(),
    );
}
