//! The training data: common surnames per language, lower-case ASCII.

/// `(language, surnames)`; the language names are what requests use.
pub const NAMES: &[(&str, &str)] = &[
    (
        "english",
        "smith johnson williams brown jones miller davis wilson taylor clark hall allen young \
         king wright scott green baker adams nelson hill campbell mitchell roberts carter \
         phillips evans turner parker collins edwards stewart morris cook rogers morgan cooper \
         peterson bailey reed",
    ),
    (
        "french",
        "martin bernard dubois thomas robert richard petit durand leroy moreau simon laurent \
         lefebvre michel fournier girard bonnet dupont lambert fontaine rousseau vincent blanc \
         guerin boyer chevalier gauthier perrin morel mercier faure andre lemaire renard dumont \
         mathieu clement marchand beaumont roussel",
    ),
    (
        "german",
        "muller schmidt schneider fischer weber meyer wagner becker schulz hoffmann koch richter \
         klein wolf schroder neumann schwarz zimmermann braun kruger hofmann hartmann lange \
         schmitt werner krause meier lehmann schmid schulze maier kohler herrmann walter konig \
         mayer huber kaiser fuchs peters",
    ),
    (
        "italian",
        "rossi russo ferrari esposito bianchi romano colombo ricci marino greco bruno gallo conti \
         deluca mancini costa giordano rizzo lombardi moretti barbieri fontana santoro mariani \
         rinaldi caruso ferrara galli martini leone longo gentile martinelli vitale lombardo \
         serra coppola desantis damico marchetti",
    ),
    (
        "spanish",
        "garcia fernandez gonzalez rodriguez lopez martinez sanchez perez gomez jimenez ruiz \
         hernandez diaz moreno alvarez munoz romero alonso gutierrez navarro torres dominguez \
         vazquez ramos gil ramirez serrano blanco suarez molina morales ortega delgado castro \
         ortiz rubio marin sanz nunez iglesias",
    ),
    (
        "russian",
        "ivanov smirnov kuznetsov popov vasiliev petrov sokolov mikhailov novikov fedorov \
         morozov volkov alekseev lebedev semenov egorov pavlov kozlov stepanov nikolaev orlov \
         andreev makarov nikitin zakharov zaitsev soloviev borisov yakovlev grigoriev romanov \
         vorobiev sergeev kuzmin frolov alexandrov dmitriev korolev gusev kiselev",
    ),
    (
        "japanese",
        "sato suzuki takahashi tanaka watanabe ito yamamoto nakamura kobayashi kato yoshida \
         yamada sasaki yamaguchi matsumoto inoue kimura hayashi shimizu yamazaki mori abe ikeda \
         hashimoto yamashita ishikawa nakajima maeda fujita ogawa goto okada hasegawa murakami \
         kondo ishii saito sakamoto endo aoki",
    ),
    (
        "irish",
        "murphy kelly sullivan walsh obrien byrne ryan oconnor oneill reilly doyle mccarthy \
         gallagher doherty kennedy lynch murray quinn mcloughlin carroll connolly daly connell \
         dunne brennan burke farrell fitzgerald healy keane kavanagh mcgrath nolan power regan \
         sheehan whelan hogan flynn duffy",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forty_lower_case_names_per_language() {
        for (language, names) in NAMES {
            let names: Vec<&str> = names.split_whitespace().collect();
            assert_eq!(names.len(), 40, "{language}");
            for n in names {
                assert!(
                    n.len() >= 2 && n.bytes().all(|b| b.is_ascii_lowercase()),
                    "{n}"
                );
            }
        }
    }
}
