//! Any bytes given to the image validator: an error or a valid image whose
//! accessors stay inside the file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = kiln_image::Image::parse(data.to_vec()) {
        for s in image.segments() {
            let bytes = image.segment_data(s);
            assert_eq!(bytes.len() as u64, s.file_size);
            assert!(!(s.write && s.execute));
            assert!(s.vaddr >= kiln_abi::IMAGE_BASE && s.end() <= kiln_abi::IMAGE_LIMIT);
        }
        assert!(image.end() >= kiln_abi::IMAGE_BASE);
        assert!(image.stack_size() <= kiln_abi::MAX_STACK_SIZE);
    }
});
